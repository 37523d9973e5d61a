"""SileroVAD: a per-session stream node turning audio frames into turns.

Why Silero (the ONNX model faster-whisper bundles) rather than webrtcvad: it is
far more robust to noise and music (webrtcvad is an energy/GMM detector that
fires on keyboard clicks and breathing, which would barge in on the bot), it
costs about 0.1 ms per 32 ms window on one CPU thread, and it comes with the
faster-whisper package the STT node needs anyway: no extra package, no torch.

One 32 ms window (512 samples at 16 kHz) at a time, carrying the model's
recurrent state per session (one generator per session owns it). Speech starts
when ``min_speech_ms`` of audio is above ``threshold``: then it emits
``SpeechStarted`` and ``Interrupt`` (barge-in: the runtime drops the bot's current
turn). Requiring a little speech first keeps a cough or a click from cutting the
bot off. Silence is audio below ``threshold - 0.15`` (hysteresis, as Silero's
reference does). The ``Utterance`` carries ``pad_ms`` of audio from before the
detected start (the detector reports it late) and is cut at ``max_speech_s``
(Whisper hears 30 s at most).

Turn-taking, which is where a voice reply's latency goes (see nodes/turn.py):

- Speculative end of turn (``speculative``): at the first ``first_silence_ms`` of
  silence the node yields ``SpeculativeTurn`` and the utterance so
  far. The runtime starts the turn at once (STT, LLM, TTS) but holds its outputs.
  If the silence lasts to the end-of-turn threshold the node yields ``ConfirmTurn``
  and that speculative utterance IS the turn (the audio since is silence, so the
  transcript would be the same: nothing is redone or re-emitted). If the user
  speaks again first (one window above ``threshold``), it yields
  ``Interrupt(reason="speculation_abandoned")``: the runtime discards the turn, and
  a later pause speculates again on the whole utterance. Without speculation the
  utterance is yielded once the end-of-turn silence has passed.
- Interim snapshots (``interim_ms``): every so often while the user speaks, a
  ``Snapshot`` of the utterance so far, for the (batched) STT to transcribe into an
  interim transcript. A new one waits until the previous one's words came back
  (so a busy STT is not queued up with snapshots that are already old).
- Adaptive end of turn (``adaptive``): the end-of-turn silence follows the words
  heard so far (``nodes.heard.end_of_turn_ms``): ``eot_min_ms`` after a finished
  question or sentence, ``eot_max_ms`` after a trailing "and", "so", "um", and
  ``min_silence_ms`` otherwise.

- End-of-turn model (``turn_model="smart-turn-v3.2"``, nodes/smartturn.py): the
  audio of the turn is scored at the first silence (and every ``turn_every_ms`` of
  silence after, when set) by one model for every session, batched across them; a probability
  of at least ``turn_done`` ends the turn at once, under ``turn_hold`` holds it up to
  ``eot_max_ms``, in between ``min_silence_ms``. The demo's thresholds were measured
  on the turn-taking set (benchmarks/turnset.py), not guessed.
- Preemptive generation (``preemptive``, with speculation and interim transcripts):
  a pause's first silent window sends the utterance to the STT at once; the
  speculative turn starts ``settle_ms`` into the silence from those words (or that
  audio, which the STT remembers), or from an interim transcript that already heard
  the utterance when there is one (checked against the transcript of the whole
  utterance); see nodes/turn.py.

With ``marks`` the node also yields ``TurnTiming`` before each turn (speculative or
not), which dates the end of the user's speech for the per-turn latency breakdown.
All of these are off by default (demos/voice.py turns them on).

The state machine is ``nodes.turn.TurnTaking`` (``self.turning``): its
``speculated``, ``confirmed_turns`` and ``abandoned`` count speculative turns over
every session (hits are confirmed ones, misses abandoned ones), ``preempted``,
``preempt_hits`` and ``preempt_misses`` the turns started from an interim transcript.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np

import chains
from chains import AudioFrame, Stream
from chains.audio import Windower
from nodes import tuning
from nodes.turn import TurnTaking, VADOutput

RATE = 16000
WINDOW = 512  # samples per model step at 16 kHz
CONTEXT = 64  # samples of the previous window the model sees


@chains.node
class SileroVAD:
    def __init__(
        self,
        threshold: float = 0.5,
        min_silence_ms: float = 500,
        min_speech_ms: float = 160,
        pad_ms: float = 200,
        max_speech_s: float = 28,
        interrupt: bool = True,
        speculative: bool = False,
        first_silence_ms: float = 160,
        interim_ms: float = 0,
        adaptive: bool = False,
        eot_min_ms: float = 300,
        eot_max_ms: float = 1000,
        marks: bool = False,
        turn_model: str | None = None,
        turn_done: float = 0.5,
        turn_hold: float = 0.5,
        turn_every_ms: float = 0,
        preemptive: bool = False,
        settle_ms: float = 64,
        cover_ms: float = 250,
    ):
        import onnxruntime

        from nodes.resolve import loading, silero_path

        self.smart_turn = None
        if turn_model:
            from nodes.smartturn import SmartTurnModel

            self.smart_turn = SmartTurnModel(turn_model)
        self.turning = TurnTaking(
            threshold=threshold,
            min_silence_ms=min_silence_ms,
            min_speech_ms=min_speech_ms,
            pad_ms=pad_ms,
            max_speech_s=max_speech_s,
            interrupt=interrupt,
            speculative=speculative,
            first_silence_ms=first_silence_ms,
            interim_ms=interim_ms,
            adaptive=adaptive,
            eot_min_ms=eot_min_ms,
            eot_max_ms=eot_max_ms,
            marks=marks,
            turn_model=self.smart_turn.probability if self.smart_turn is not None else None,
            turn_done=turn_done,
            turn_hold=turn_hold,
            turn_every_ms=turn_every_ms,
            preemptive=preemptive,
            settle_ms=settle_ms,
            cover_ms=cover_ms,
            rate=RATE,
            window=WINDOW,
        )
        path = silero_path()
        opts = onnxruntime.SessionOptions()
        opts.inter_op_num_threads = 1
        opts.intra_op_num_threads = 1
        opts.log_severity_level = 4
        with loading("silero-vad", "faster-whisper", path):
            self.session = onnxruntime.InferenceSession(
                str(path), providers=["CPUExecutionProvider"], sess_options=opts
            )

    @classmethod
    def chains_models(
        cls, *args: object, turn_model: str | None = None, **kwargs: object
    ) -> list[chains.ModelRef]:
        from nodes.resolve import silero_refs, smart_turn_refs

        return silero_refs() + (smart_turn_refs(turn_model) if turn_model else [])

    def new_state(self) -> dict[str, np.ndarray]:
        return {
            "h": np.zeros((1, 1, 128), dtype=np.float32),
            "c": np.zeros((1, 1, 128), dtype=np.float32),
            "context": np.zeros(CONTEXT, dtype=np.float32),
        }

    def probability(self, window: np.ndarray, state: dict[str, np.ndarray]) -> float:
        """Speech probability of one 512-sample window, advancing ``state``."""
        x = np.concatenate([state["context"], window])[None, :].astype(np.float32)
        out, state["h"], state["c"] = self.session.run(None, {"input": x, "h": state["h"], "c": state["c"]})
        state["context"] = window[-CONTEXT:]
        return float(np.asarray(out).reshape(-1)[0])

    async def __call__(self, frames: Stream[AudioFrame]) -> AsyncIterator[VADOutput]:
        turning, frames = tuning.for_session(self.turning, frames)  # a Realtime session's own knobs
        async for out in turning.turns(self.windows(frames)):
            yield out

    async def windows(self, frames: Stream[AudioFrame]) -> AsyncIterator[tuple[np.ndarray, float]]:
        """Each 512-sample window of the audio at 16 kHz with its speech probability."""
        state = self.new_state()
        windower = Windower(RATE, WINDOW)
        async for frame in frames:
            if not isinstance(frame, AudioFrame):
                raise TypeError(f"SileroVAD wants AudioFrame items, got {type(frame).__name__}")
            for window in windower.push(frame.pcm, frame.sample_rate):
                yield window, self.probability(window, state)
