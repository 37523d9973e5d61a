"""Speculative turns through the runtime, on the voice chain's shape with fake
stages and scripted audio: the real turn taking (nodes.turn.TurnTaking) over
scripted speech probabilities, a fake batched STT, the real ``transcripts`` and
``speech_chunks`` nodes, a fake streaming LLM the test holds with a gate, a fake
TTS. Timing is scripted by when the test feeds each 32 ms window, never by the
clock.

- A confirmed speculative turn sends the same reply as a non-speculative run, and
  earlier: the reply is computed during the end-of-turn silence and goes out at the
  confirmation, where without speculation the LLM has not even started.
- An abandoned one (the user goes on after a pause) sends nothing, its LLM call is
  cancelled, and no work of it is left queued; the next speculative turn answers
  the whole utterance.
- Interim transcripts arrive before the final one.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from typing import Any

import anyio
import numpy as np

import chains
from chains import ConfirmTurn, Interrupt, Stream, Text, TextDelta, Utterance
from nodes.sentences import speech_chunks
from nodes.turn import ABANDONED, Heard, Interim, Preempted, Snapshot, TurnTaking, VADOutput, transcripts
from tests.fakes import Gate, settle, wait_until

WINDOW = 512
SPEECH, SILENCE = 0.9, 0.0


class Voice:
    """The fakes of one test and the chain that wires them."""

    def __init__(self, **turn_options: Any):
        self.turning = TurnTaking(min_silence_ms=480, first_silence_ms=160, **turn_options)
        self.stt_batches: list[list[str]] = []
        self.stt_hold: threading.Event | None = None  # set: passes of settled snapshots wait for it
        self.llm_gate = Gate()
        self.llm_started: list[str] = []
        self.llm_finished: list[str] = []
        self.llm_cancelled: list[str] = []
        self.spoken: list[str] = []
        voice = self

        @chains.node
        async def vad(probs: Stream[float]) -> AsyncIterator[VADOutput]:
            async def windows() -> AsyncIterator[tuple[np.ndarray, float]]:
                async for p in probs:
                    yield np.full(WINDOW, 0.1 if p >= 0.5 else 0.0, dtype=np.float32), p

            async for out in voice.turning.turns(windows()):
                yield out

        @chains.node(batch=chains.Batch(max_size=8, max_wait_ms=1))
        def stt(utterances: list[Utterance]) -> list[Text | TextDelta]:
            """The "words" of an utterance: how many windows of speech it holds (like
            a real STT, it hears nothing in the silence around them)."""
            out: list[Text | TextDelta] = []
            if voice.stt_hold is not None and any(isinstance(u, Snapshot) and u.settled for u in utterances):
                voice.stt_hold.wait(10)
            for u in utterances:
                if isinstance(u, Heard):  # words an interim already heard: passed on
                    out.append(Text(text=u.text))
                    continue
                x = np.frombuffer(u.pcm, dtype="<i2").reshape(-1, WINDOW)
                words = f"heard {int((np.abs(x).max(axis=1) > 0).sum())} windows"
                out.append(
                    Interim(text=words, turn=u.turn, audio_ms=u.duration_ms)
                    if isinstance(u, Snapshot)
                    else Text(text=words)
                )
            voice.stt_batches.append([t.text for t in out])
            return out

        @chains.node(concurrency=4)
        async def llm(prompt: Text) -> AsyncIterator[TextDelta]:
            voice.llm_started.append(prompt.text)
            done = False
            try:
                for tok in ["You said,", " I think,", f" that you {prompt.text}.", " Bye now."]:
                    await voice.llm_gate.wait()
                    yield TextDelta(text=tok)
                yield TextDelta(text="", final=True)
                done = True
            finally:
                (voice.llm_finished if done else voice.llm_cancelled).append(prompt.text)

        @chains.node
        async def tts(chunk: Text) -> AsyncIterator[Text]:
            voice.spoken.append(chunk.text)
            yield Text(text=f"<audio {chunk.text}>")

        @chains.chain
        def chain(probs: Stream[float]):
            heard = stt(vad(probs))
            reply = llm(transcripts(heard))
            return {"transcript": heard, "reply": reply, "audio": tts(speech_chunks(reply))}

        self.chain = chain

    async def run(self, script: list[tuple[float, int]], script_fn: Any = None) -> tuple[list[Any], Any]:
        """Feed the windows one by one (letting the pipeline settle after each), with
        ``script_fn(i, outs)`` awaited before window ``i``; the outputs in order, each
        with the number of windows fed when it was received, and the runtime's
        session."""
        outs: list[tuple[int, chains.Output]] = []
        fed = [0]
        async with chains.Runtime(self.chain) as rt, rt.session() as sess:

            async def feed() -> None:
                i = 0
                for p, n in script:
                    for _ in range(n):
                        if script_fn is not None:
                            await script_fn(i, outs, rt)
                        await sess.send(p)
                        i += 1
                        fed[0] = i
                        await settle(5)
                sess.close_inputs()

            async def read() -> None:
                async for o in sess:
                    outs.append((fed[0], o))

            with anyio.fail_after(20):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(read)
                    await feed()
            return outs, (rt, sess)


def data(outs: list[tuple[int, Any]]) -> list[tuple[str, Any]]:
    return [(o.name, o.value) for _, o in outs if o.name not in ("events", "error")]


def first_at(outs: list[tuple[int, Any]], name: str) -> int:
    return next(i for i, o in outs if o.name == name)


SPEECH_THEN_PAUSE = [(SILENCE, 5), (SPEECH, 20), (SILENCE, 25)]
SPEC_AT = 5 + 20 + 5  # windows fed when the speculative turn starts (160 ms of silence)
CONFIRM_AT = 5 + 20 + 15  # ... and when 480 ms of silence confirm it


async def test_a_confirmed_speculative_turn_sends_the_same_reply_earlier() -> None:
    plain = Voice(speculative=False)
    plain.llm_gate.open()
    plain_outs, _ = await plain.run(SPEECH_THEN_PAUSE)

    spec = Voice(speculative=True)
    spec.llm_gate.open()
    seen_before_confirm: dict[str, Any] = {}

    async def check(i: int, outs: list[Any], rt: Any) -> None:
        if i == CONFIRM_AT - 1:  # the window that confirms the turn is next
            await wait_until(lambda: len(spec.spoken) == 3, what="the speculative reply spoken")
            seen_before_confirm["llm"] = list(spec.llm_finished)
            seen_before_confirm["data"] = data(outs)

    spec_outs, (_, sess) = await spec.run(SPEECH_THEN_PAUSE, check)

    # the same transcript, reply and audio, in the same order
    assert data(spec_outs) == data(plain_outs)
    assert [v.text for n, v in data(spec_outs) if n == "audio"] == [
        "<audio You said,>",
        "<audio I think, that you heard 20 windows.>",
        "<audio Bye now.>",
    ]
    # earlier: the whole reply was ready (and held) before the turn was confirmed...
    assert seen_before_confirm == {"llm": ["heard 20 windows"], "data": []}
    assert first_at(spec_outs, "audio") == CONFIRM_AT  # ...and went out at the confirmation
    # without speculation the LLM is only asked once the silence has ended the turn
    assert first_at(plain_outs, "transcript") >= CONFIRM_AT
    events = [o.value for _, o in spec_outs if o.name == "events"]
    assert any(isinstance(e, ConfirmTurn) for e in events)
    assert sess.speculative["confirmed"] == 1 and sess.speculative["abandoned"] == 0
    assert (spec.turning.confirmed_turns, spec.turning.abandoned) == (1, 0)


async def test_an_abandoned_speculative_turn_sends_nothing_and_leaves_no_work() -> None:
    v = Voice(speculative=True)
    script = [(SILENCE, 5), (SPEECH, 20), (SILENCE, 8), (SPEECH, 10), (SILENCE, 25)]
    resume_at = 5 + 20 + 8
    state: dict[str, Any] = {}

    async def check(i: int, outs: list[Any], rt: Any) -> None:
        if i == SPEC_AT + 1:
            v.llm_gate.allow(2)  # the speculative reply gets two tokens, then waits
            await wait_until(lambda: v.llm_gate.waiting == 1, what="the speculative LLM call in flight")
        if i == resume_at + 1:  # the user went on: the abandon is yielded at the window before
            await wait_until(lambda: v.llm_cancelled, what="the speculative LLM call cancelled")
            state["data_before"] = data(outs)
            state["queued"] = {st.name: len(st.batcher) if st.batcher is not None else 0 for st in rt.stages}
            v.llm_gate.open()

    outs, (_, sess) = await v.run(script, check)

    assert v.llm_cancelled == ["heard 20 windows"]  # the speculative request was aborted
    assert state["data_before"] == []  # nothing of it reached the client
    assert all(n == 0 for n in state["queued"].values()), state["queued"]
    events = [o.value for _, o in outs if o.name == "events"]
    assert [e.reason for e in events if isinstance(e, Interrupt)] == ["user speech", ABANDONED]
    # the next speculative turn heard the whole utterance, pause included, and was answered
    transcript = [v_.text for n, v_ in data(outs) if n == "transcript"]
    assert transcript == ["heard 30 windows"]
    assert v.llm_finished == ["heard 30 windows"]
    reply = "".join(v_.text for n, v_ in data(outs) if n == "reply")
    assert reply == "You said, I think, that you heard 30 windows. Bye now."
    assert {o.epoch for _, o in outs if o.name == "reply"} == {sess.epoch}
    assert {k: sess.speculative[k] for k in ("started", "confirmed", "abandoned")} == {
        "started": 2,
        "confirmed": 1,
        "abandoned": 1,
    }
    assert (v.turning.speculated, v.turning.confirmed_turns, v.turning.abandoned) == (2, 1, 1)


async def test_interim_transcripts_arrive_before_the_final_one() -> None:
    v = Voice(speculative=True, interim_ms=192)  # a snapshot per 6 windows of speech
    v.llm_gate.open()
    outs, _ = await v.run([(SILENCE, 5), (SPEECH, 30), (SILENCE, 25)])
    heard = [value for n, value in data(outs) if n == "transcript"]
    assert len(heard) >= 3
    *interim, final = heard
    assert all(isinstance(t, Interim) and not t.final for t in interim)
    assert isinstance(final, Text) and final.text == "heard 30 windows"
    sizes = [int(t.text.split()[1]) for t in interim]
    assert sizes == sorted(sizes) and sizes[-1] < 30
    # interim transcripts were never answered
    assert v.llm_started == ["heard 30 windows"]


async def test_a_preemptive_start_is_checked_by_its_final_transcript_through_the_runtime() -> None:
    """An interim snapshot at the last window of speech (25 windows with the pad) covers
    the utterance; the pause's own snapshot is not back at the settle (held in the STT),
    so the turn starts from the interim's words; the check snapshot of the whole
    utterance must reach the STT in the new turn (sent before the turn's start, the
    runtime dropped it as stale, and every preempted turn waited out the check)."""
    v = Voice(speculative=True, interim_ms=800, preemptive=True, settle_ms=64, cover_ms=250)
    v.llm_gate.open()
    v.stt_hold = hold = threading.Event()

    async def release(i: int, outs: list[Any], rt: Any) -> None:
        if i == 27:  # the silence's first window (25) and the settle (26) fed
            hold.set()

    outs, _ = await v.run(SPEECH_THEN_PAUSE, release)
    events = [o.value for _, o in outs if o.name == "events"]
    verdicts = [e for e in events if isinstance(e, Preempted)]
    assert [(e.hit, e.interim, e.final) for e in verdicts] == [(True, "heard 20 windows", "heard 20 windows")]
    assert v.llm_started == ["heard 20 windows"]  # one reply, from the interim's words
    assert first_at(outs, "audio") == CONFIRM_AT  # confirmed at 480 ms of silence, not held for the check
    assert (v.turning.preempted, v.turning.preempt_hits, v.turning.preempt_misses) == (1, 1, 0)


async def test_the_pause_snapshot_starts_the_turn_through_the_runtime() -> None:
    """The pause's first silent window sends the utterance to the STT; its words start
    the turn at the settle: the utterance is transcribed once more, with no check."""
    v = Voice(speculative=True, interim_ms=800, preemptive=True, settle_ms=64, cover_ms=250)
    v.llm_gate.open()
    outs, _ = await v.run(SPEECH_THEN_PAUSE)
    assert v.llm_started == ["heard 20 windows"]
    assert not [o for _, o in outs if o.name == "events" and isinstance(o.value, Preempted)]
    passes = [t for batch in v.stt_batches for t in batch]
    # the interim, the pause's snapshot and its words passed on (this fake STT is a
    # function: WhisperSTT's known_result answers a Heard without a batch)
    assert passes == ["heard 20 windows"] * 3
    assert first_at(outs, "audio") == CONFIRM_AT
