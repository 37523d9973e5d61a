"""transport/pacing.py: reply audio leaves at 1x real time within the lead, a cut drops
what is still to send and says what was played and heard. Time is a hand-driven clock:
a wait moves it forward instead of sleeping, so the assertions are about the pacing
rule, not about how fast this machine is."""

from __future__ import annotations

import anyio
import pytest

from chains.messages import Spoken, WordTiming
from transport.pacing import Pacer


class Clock:
    """Virtual time: ``wait`` advances it by the time asked unless woken first."""

    def __init__(self) -> None:
        self.t = 100.0
        self.waits: list[float] = []

    def __call__(self) -> float:
        return self.t

    async def wait(self, seconds: float, wake: anyio.Event) -> None:
        self.waits.append(seconds)
        await anyio.sleep(0)
        if not wake.is_set():
            self.t += seconds


class Wire:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.sent: list[tuple[float, str]] = []

    def sender(self, label: str):
        async def send() -> None:
            self.sent.append((self.clock.t, label))

        return send


async def _play(pacer: Pacer, wire: Wire, frames: int, epoch: int = 1, ms: float = 40.0) -> int:
    sent = 0
    for i in range(frames):
        sent += await pacer.send(ms, epoch, lambda: epoch, wire.sender(f"{epoch}:{i}"))
    return sent


async def test_audio_goes_out_at_real_time_with_a_bounded_lead() -> None:
    clock = Clock()
    pacer, wire = Pacer(200, clock=clock, wait=clock.wait), Wire(clock)
    assert await _play(pacer, wire, 100) == 100  # 4 s of audio
    start = wire.sent[0][0]
    for i, (t, _) in enumerate(wire.sent):
        # frame i leaves no earlier than its play time minus the lead
        assert (t - start) * 1000 >= i * 40 - 200 - 1e-6
    assert max(pacer.leads) <= 200 + 1e-6
    assert (wire.sent[-1][0] - start) * 1000 == pytest.approx(4000 - 200, abs=40)
    assert wire.sent[4][0] == start  # the first 200 ms go at once


async def test_a_cut_drops_queued_audio_and_reports_sent_and_played() -> None:
    clock = Clock()
    pacer, wire = Pacer(200, clock=clock, wait=clock.wait), Wire(clock)
    await _play(pacer, wire, 25)  # 1000 ms sent
    clock.t += 0.3
    pb = pacer.cut(1)
    assert pb is not None and pb.interrupted
    assert pb.sent_ms == pytest.approx(1000)
    # by the clock, the client had played sent - lead
    assert pb.played_ms == pytest.approx(1000 - 200 + 300 - 200, abs=1) or pb.played_ms <= 1000
    n = len(wire.sent)
    assert not await pacer.send(40, 1, lambda: 2, wire.sender("late"))  # the old turn moved on
    assert len(wire.sent) == n and pacer.dropped == 1
    assert pacer.replies[-1] is pb
    assert list(pacer.stops) == [0.0]


async def test_played_is_sent_minus_lead_without_a_report() -> None:
    clock = Clock()
    pacer, wire = Pacer(200, clock=clock, wait=clock.wait), Wire(clock)
    await _play(pacer, wire, 50)  # 2000 ms sent; the writer is 200 ms ahead
    assert pacer.lead() == pytest.approx(200, abs=40)
    pb = pacer.cut(1)
    assert pb is not None
    assert pb.played_ms == pytest.approx(pb.sent_ms - 200, abs=40)


async def test_the_clients_report_is_the_played_position() -> None:
    clock = Clock()
    pacer, wire = Pacer(200, clock=clock, wait=clock.wait), Wire(clock)
    await _play(pacer, wire, 50)
    pacer.report(1, 640.0)
    pacer.report(0, 1900.0)  # another turn's report: ignored
    pb = pacer.cut(1)
    assert pb is not None and pb.played_ms == 640.0


async def test_heard_text_follows_the_played_position() -> None:
    clock = Clock()
    pacer, wire = Pacer(200, clock=clock, wait=clock.wait), Wire(clock)
    first = Spoken(text="Paris is the capital.", duration_ms=400)
    timed = [
        WordTiming(word=w, start_ms=100 * i, end_ms=100 * i + 90) for i, w in enumerate(["It", "is", "big"])
    ]
    second = Spoken(text="It is big", duration_ms=320, words=timed)
    for i in range(10):
        await pacer.send(40, 1, lambda: 1, wire.sender("a"), first if i == 0 else None)
    for i in range(8):
        await pacer.send(40, 1, lambda: 1, wire.sender("b"), second if i == 0 else None)
    pacer.report(1, 400 + 195)  # 2 words of the second chunk ended by then
    pb = pacer.cut(1)
    assert pb is not None
    assert pb.heard == "Paris is the capital. It is"
    assert pb.text == "Paris is the capital. It is big"


async def test_a_reply_that_ends_is_recorded_whole_and_a_new_turn_starts_afresh() -> None:
    clock = Clock()
    pacer, wire = Pacer(200, clock=clock, wait=clock.wait), Wire(clock)
    await _play(pacer, wire, 10, epoch=1)
    clock.t += 5
    await _play(pacer, wire, 10, epoch=2)
    assert [(p.epoch, p.sent_ms, p.played_ms, p.interrupted) for p in pacer.replies] == [(1, 400, 400, False)]
    assert pacer.cut(1) is None  # turn 1 had ended: nothing to cut
    assert pacer.cut(2) is not None


async def test_a_cut_wakes_a_send_waiting_for_the_lead() -> None:
    pacer = Pacer(200, clock=lambda: 0.0)  # a clock that never moves: the 2nd frame waits forever
    epoch = {"now": 1}
    sent: list[int] = []

    async def send() -> None:
        sent.append(1)

    results: list[bool] = []

    async def writer() -> None:
        results.append(await pacer.send(200, 1, lambda: epoch["now"], send))
        results.append(await pacer.send(200, 1, lambda: epoch["now"], send))

    with anyio.fail_after(10):  # a hang guard, not a timing claim
        async with anyio.create_task_group() as tg:
            tg.start_soon(writer)
            while pacer.sent_ms < 200:
                await anyio.sleep(0)
            await anyio.sleep(0.01)
            epoch["now"] = 2
            pb = pacer.cut(1)
    assert results == [True, False] and sent == [1]
    assert pb is not None and pb.sent_ms == 200


def test_lead_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Pacer(0)
