"""Synthesise the agent demo's sample calls (run once; the wavs are committed).

    python demos/assets/agent/make_calls.py

Piper's "joe" voice speaks each line into a 16 kHz mono PCM16 wav with silence
around it (the VAD needs the trailing silence to end the turn).
"""

from __future__ import annotations

from pathlib import Path

CALLS = {
    "order": "Hi, can you tell me where my order four five one two is?",
    "callback": (
        "Hello, please have someone call me back tomorrow at ten. "
        "My number is five five five, zero one zero zero."
    ),
}

if __name__ == "__main__":
    from nodes import PiperTTS

    tts = PiperTTS().instantiate()
    here = Path(__file__).parent
    for name, line in CALLS.items():
        tts.write_wav(line, str(here / f"{name}.wav"), rate=16000)
        print(here / f"{name}.wav")
