"""Synthesise the call router's sample calls (run once; the wavs are committed).

    python demos/assets/calls/make_calls.py

Piper's "joe" voice speaks each caller's line into a 16 kHz mono PCM16 wav with
silence around it (the VAD needs the trailing silence to end the turn).
"""

from __future__ import annotations

from pathlib import Path

CALLS = {
    "billing": "Hi, this is Maria Lopez. I was charged twice on my bill this month.",
    "support": "Hello, my name is John Smith. My internet connection keeps dropping every evening.",
    "cancel": "Hi, this is Sarah Chen. I want to cancel my subscription.",
}

if __name__ == "__main__":
    from nodes import PiperTTS

    tts = PiperTTS().instantiate()
    here = Path(__file__).parent
    for name, line in CALLS.items():
        tts.write_wav(line, str(here / f"{name}.wav"), rate=16000)
        print(here / f"{name}.wav")
