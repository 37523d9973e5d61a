"""The per-turn ``metrics`` event's latency breakdown and the interim transcripts,
as the transport maps a voice session's outputs (transport/outputs.py), with
scripted times: the breakdown is measured from the end of speech the VAD's
``TurnTiming`` dates; a confirmed speculative turn counts a hit, an abandoned one
a miss; interim transcripts go out with ``final: false`` and do not split turns."""

from __future__ import annotations

from chains import (
    AudioFrame,
    ConfirmTurn,
    EndOfTurn,
    Interrupt,
    SpeculativeTurn,
    SpeechStarted,
    Text,
    TextDelta,
)
from nodes.heard import Preempted
from nodes.turn import ABANDONED, Interim, TurnTiming
from transport.outputs import OutputMapper
from transport.protocol import Metrics, Transcript, decode_server, encode

AUDIO = AudioFrame(pcm=b"\x00\x00" * 160, sample_rate=16000)


def metrics_of(msgs: list) -> list[Metrics]:
    return [m for m in msgs if isinstance(m, Metrics)]


def test_a_confirmed_speculative_turn_gets_its_breakdown_and_a_hit() -> None:
    m = OutputMapper(16000)
    out: list = []
    o = 10.0  # the origin of the frames that caused the turn
    out += m.map("events", SpeechStarted(), o, 0, 9.0)
    out += m.map("events", Interrupt(reason="user speech"), o, 1, 9.0)
    out += m.map("transcript", Interim(text="What is", turn=1), o, 1, 9.5)
    out += m.map("events", TurnTiming(silence_ms=160), o, 1, 10.16)  # speech ended at 10.0
    out += m.map("events", SpeculativeTurn(reason="first silence"), o, 2, 10.16)
    out += m.map("events", Interrupt(reason=ABANDONED), o, 3, 10.3)  # the user went on
    out += m.map("events", TurnTiming(silence_ms=160), o, 3, 11.16)  # ...and ended at 11.0
    out += m.map("events", SpeculativeTurn(reason="first silence"), o, 4, 11.16)
    # the held outputs go out at the confirmation, just before its event
    out += m.map("transcript", Text(text="What is the capital of France?"), o, 4, 11.5)
    out += m.map("reply", TextDelta(text="Paris."), o, 4, 11.5)
    out += m.map("audio", AUDIO, o, 4, 11.5)
    out += m.map("events", ConfirmTurn(), o, 4, 11.5)
    out += m.map("reply", TextDelta(text="", final=True), o, 4, 11.6)
    out += m.close_turn(12.0)
    transcripts = [x for x in out if isinstance(x, Transcript)]
    assert [(t.text, t.final) for t in transcripts] == [
        ("What is", False),
        ("What is the capital of France?", True),
    ]
    (met,) = metrics_of(out)
    assert met.breakdown == {
        "end_of_turn": 500.0,
        "transcript": 500.0,
        "first_token": 500.0,
        "first_audio": 500.0,
    }
    assert (met.speculative_hits, met.speculative_misses, met.interim_transcripts) == (1, 1, 1)
    assert not met.interrupted
    assert decode_server(encode(met)) == met  # the client decodes it as sent


def test_a_turn_without_speculation_is_dated_by_its_end_of_turn_mark() -> None:
    m = OutputMapper(16000)
    out: list = []
    out += m.map("events", TurnTiming(silence_ms=500, end_of_turn=True), 5.0, 0, 5.5)
    out += m.map("transcript", Text(text="Hello."), 5.5, 0, 5.85)
    out += m.map("reply", TextDelta(text="Hi"), 5.5, 0, 6.0)
    out += m.map("audio", AUDIO, 5.5, 0, 6.2)
    out += m.map("events", SpeechStarted(), 7.0, 0, 7.0)
    out += m.map("events", Interrupt(reason="user speech"), 7.0, 1, 7.0)  # barge-in closes it
    (met,) = metrics_of(out)
    assert met.breakdown == {
        "end_of_turn": 500.0,
        "transcript": 850.0,
        "first_token": 1000.0,
        "first_audio": 1200.0,
    }
    assert (met.speculative_hits, met.speculative_misses) == (0, 0) and met.interrupted


def test_interim_transcripts_do_not_split_or_open_turns() -> None:
    m = OutputMapper(16000)
    out: list = []
    out += m.map("transcript", Text(text="One."), 1.0, 0, 1.1)
    out += m.map("reply", TextDelta(text="Yes"), 1.0, 0, 1.2)
    out += m.map("transcript", Interim(text="Two", turn=2), 2.0, 0, 2.1)  # the user speaks again
    assert not metrics_of(out)  # the first turn goes on until the next final transcript
    out += m.map("transcript", Text(text="Two more."), 3.0, 0, 3.1)
    (met,) = metrics_of(out)
    assert met.outputs == 2 and met.breakdown is None  # no VAD marks: no breakdown
    out += m.close_turn(4.0)
    assert metrics_of(out)[-1].interim_transcripts == 1  # counted for the turn it preceded


def test_a_text_chain_gets_no_voice_metrics() -> None:
    m = OutputMapper(16000)
    out = m.map("out", Text(text="x"), 1.0, 0, 1.25) + m.close_turn(1.5)
    assert metrics_of(out) == []  # no audio, no transcript, no VAD mark: a text chain


def test_a_plain_chain_told_it_is_voice_gets_the_same_metrics_as_before() -> None:
    m = OutputMapper(16000, voice=True)
    out = m.map("out", Text(text="x"), 1.0, 0, 1.25) + m.close_turn(1.5)
    (met,) = metrics_of(out)
    assert met.first_text_ms == 250.0 and met.breakdown is None
    assert b"breakdown" not in encode(met) and b"speculative" not in encode(met)


def test_preemption_hits_and_misses_count_in_the_turn_they_judged() -> None:
    m = OutputMapper(16000)
    out: list = []
    o = 10.0
    # turn 1: started from the interim words, the final words differed: redone (a miss)
    out += m.map("events", TurnTiming(silence_ms=160), o, 1, 10.16)
    out += m.map("events", SpeculativeTurn(reason="first silence"), o, 2, 10.16)
    out += m.map("events", Preempted(hit=False, interim="What is the", final="What is the time"), o, 2, 10.4)
    out += m.map("events", Interrupt(reason=ABANDONED), o, 2, 10.4)
    out += m.map("events", SpeculativeTurn(reason="final transcript differs"), o, 3, 10.4)
    out += m.map("transcript", Text(text="What is the time"), o, 3, 10.6)
    out += m.map("reply", TextDelta(text="Noon."), o, 3, 10.6)
    out += m.map("events", ConfirmTurn(), o, 3, 10.6)
    out += m.map("events", EndOfTurn(), o, 3, 10.8)
    # turn 2: the interim words were the final ones (a hit), its held outputs go out after
    o = 20.0
    out += m.map("events", TurnTiming(silence_ms=160), o, 3, 20.16)
    out += m.map("events", SpeculativeTurn(reason="first silence"), o, 4, 20.16)
    out += m.map("events", Preempted(hit=True, interim="Thanks", final="Thanks"), o, 4, 20.3)
    out += m.map("transcript", Text(text="Thanks"), o, 4, 20.5)
    out += m.map("reply", TextDelta(text="Welcome."), o, 4, 20.5)
    out += m.map("events", ConfirmTurn(), o, 4, 20.5)
    # turn 3: no preemptive start at all
    out += m.map("transcript", Text(text="Bye"), 30.0, 5, 30.5)
    out += m.map("reply", TextDelta(text="Bye."), 30.0, 5, 30.5)
    out += m.close_turn(31.0)
    mets = metrics_of(out)
    assert [(x.preempt_hits, x.preempt_misses) for x in mets] == [(0, 1), (1, 0), (0, 0)]
    assert decode_server(encode(mets[0])) == mets[0]  # the client decodes the new fields
    assert decode_server(encode(mets[1])).preempt_hits == 1
