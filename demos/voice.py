"""The voice assistant: speech in, speech out, one model per stage shared by every
session.

    chains run demos/voice.py                                  # serve; browser at http://127.0.0.1:8765/
    chains run demos/voice.py --input demos/assets/question.wav --output reply.wav

VAD (per session) -> Whisper (batched across sessions) -> vLLM (engine-batched,
streams tokens) -> speech chunks (per session) -> Piper (streams audio per chunk).

Turn taking (nodes/vad.py, nodes/turn.py), which is where a voice reply's latency
goes:

- speculative end of turn: at 96 ms of silence the VAD starts the turn (STT, LLM
  and TTS run at once, their outputs held by the runtime); at the end of turn it
  confirms it and the held reply goes out; if the user goes on, the turn is
  abandoned (the LLM request aborted, nothing sent) and speculated again;
- interim transcripts: every 600 ms of speech the utterance so far is transcribed
  (in a 15 s window, in Whisper batches of their own that wait for any final
  utterance), and sent to the client as ``transcript`` with ``final: false``;
- preemptive generation: a pause's first silent window (32 ms) sends the utterance to
  Whisper at once, and the speculative turn starts 96 ms into the silence from that
  audio (Whisper answers it from the pass already under way, not a second one); or from
  the latest interim transcript when it heard all but 250 ms of the speech (the LLM starts at once;
  the whole utterance is transcribed as a check, and a reply the check contradicts is
  redone from its words, none confirmed before they agree). Interim snapshots use only
  Whisper's spare capacity (one in flight over every session), so a caller's final
  transcript never queues behind other callers' interims;
- end of turn: Smart Turn v3.2 (an audio model of whether the sentence is finished)
  at the first silence: "finished" (P >= 0.9) confirms the turn at once, "not
  finished" (P < 0.7), or words that trail off ("... for", "um"), hold it up to
  1.6 s of silence; 500 ms otherwise (300 ms after a finished question by the
  words alone);
- first audio sooner: the reply's first clause (or its first four words) is spoken
  on its own.

Talking over the reply interrupts it: the VAD emits ``Interrupt``, the runtime
aborts the LLM request and drops the old turn's queued chunks and audio.
"""

from __future__ import annotations

import chains
from chains import AudioFrame, Stream
from nodes import PiperTTS, SileroVAD, VLLMChat, WhisperSTT
from nodes.sentences import speech_chunks
from nodes.turn import transcripts

# Thresholds measured on the turn-taking set (benchmarks/turnset.py, BENCHMARKS.md):
# Smart Turn once at the first silence, "finished" at P >= 0.9, "not finished" under
# 0.7 or when the words trail off, held then up to 1.6 s (pauses of up to 1.2 s).
TURN_TAKING = {
    "speculative": True,
    "first_silence_ms": 160,
    "interim_ms": 600,
    "preemptive": True,
    "settle_ms": 96,  # (64 starts a speculative turn, cheap now, at nearly every gap between words)
    "cover_ms": 250,
    "turn_model": "smart-turn-v3.2",
    "turn_done": 0.9,
    "turn_hold": 0.7,
    "adaptive": True,
    "min_silence_ms": 500,
    "eot_min_ms": 300,
    "eot_max_ms": 1600,
    "marks": True,
}


@chains.chain(budget_ms=4000)
def voice(audio: Stream[AudioFrame]):
    heard = WhisperSTT(model="tiny.en")(SileroVAD(**TURN_TAKING)(audio))
    reply = VLLMChat(system="You are a helpful voice assistant. Answer in one or two short sentences.")(
        transcripts(heard)
    )
    speech = PiperTTS()(speech_chunks(reply))
    return {"transcript": heard, "reply": reply, "audio": speech}


if __name__ == "__main__":  # vLLM's workers re-import the launching script
    import sys

    from chains.cli import main

    main(["run", __file__, *sys.argv[1:]])
