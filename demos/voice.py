"""The voice assistant: speech in, speech out, one model per stage shared by every
session.

    chains run demos/voice.py                                  # serve; browser at http://127.0.0.1:8765/
    chains run demos/voice.py --input demos/assets/question.wav --output reply.wav

VAD (per session) -> Whisper (batched across sessions) -> vLLM (engine-batched,
streams tokens) -> sentence splitter (per session) -> Piper (streams audio per
sentence). Talking over the reply interrupts it: the VAD emits ``Interrupt``,
the runtime aborts the LLM request and drops the old turn's queued sentences and
audio.
"""

from __future__ import annotations

import chains
from chains import AudioFrame, Stream
from nodes import PiperTTS, SileroVAD, VLLMChat, WhisperSTT, sentences


@chains.chain(budget_ms=4000)
def voice(audio: Stream[AudioFrame]):
    turns = SileroVAD()(audio)
    text = WhisperSTT(model="tiny.en")(turns)
    reply = VLLMChat(system="You are a helpful voice assistant. Answer in one or two short sentences.")(text)
    speech = PiperTTS()(sentences(reply))
    return {"transcript": text, "reply": reply, "audio": speech}


if __name__ == "__main__":  # vLLM's workers re-import the launching script
    import sys

    from chains.cli import main

    main(["run", __file__, *sys.argv[1:]])
