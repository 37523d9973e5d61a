"""The client protocol's codecs and the output mapping, without sockets."""

from __future__ import annotations

import msgspec
import pytest

from chains import AudioFrame, EndOfTurn, ErrorEvent, Interrupt, SpeechStarted, Text, TextDelta
from chains.audio import tone
from transport.outputs import OutputMapper, event_name
from transport.protocol import (
    End,
    Error,
    Event,
    Input,
    InterruptMsg,
    Metrics,
    OutputMsg,
    ProtocolError,
    Ready,
    Start,
    TextOut,
    Transcript,
    decode_client,
    decode_server,
    encode,
)


@pytest.mark.parametrize(
    ("raw", "code", "names"),
    [
        (b"{", "bad_json", "malformed JSON"),
        (b"\xff\xfe", "bad_json", "malformed JSON"),
        (b"[1]", "bad_message", "JSON object"),
        (b"42", "bad_message", "JSON object"),
        (b"{}", "missing_field", "`type`"),
        (b'{"type": 7}', "bad_field", "`$.type`"),
        (b'{"type": "dance"}', "unknown_type", "'dance'"),
        (b'{"type": "start"}', "missing_field", "start: missing required field `$.sample_rate`"),
        (b'{"type": "start", "sample_rate": "x"}', "bad_field", "`$.sample_rate`: Expected `int`, got `str`"),
        (b'{"type": "start", "sample_rate": 10}', "bad_field", "`$.sample_rate`: Expected `int` >= 1000"),
        (b'{"type": "start", "sample_rate": 16000, "chain": 1}', "bad_field", "`$.chain`"),
        (b'{"type": "start", "sample_rate": 16000, "token": []}', "bad_field", "`$.token`"),
        (b'{"type": "input"}', "missing_field", "input: missing required field `$.data`"),
        (b'{"type": "input", "data": 1, "input": 2}', "bad_field", "`$.input`"),
        (b'{"type": "interrupt", "reason": 1}', "bad_field", "`$.reason`"),
    ],
)
def test_bad_client_messages_name_the_problem(raw: bytes, code: str, names: str):
    with pytest.raises(ProtocolError) as e:
        decode_client(raw)
    assert e.value.code == code
    assert names in e.value.message
    assert e.value.to_message() == Error(code=code, message=e.value.message)


def test_good_client_messages():
    assert decode_client('{"type": "start", "sample_rate": 16000}') == Start(sample_rate=16000)
    full = b'{"type": "start", "sample_rate": 48000, "chain": "v", "token": "t", "output_sample_rate": 24000}'
    assert decode_client(full) == Start(sample_rate=48000, chain="v", token="t", output_sample_rate=24000)
    assert decode_client(b'{"type": "input", "data": {"text": "hi"}, "input": "doc"}') == Input(
        data={"text": "hi"}, input="doc"
    )
    assert decode_client(b'{"type": "interrupt"}') == InterruptMsg()
    assert decode_client(b'{"type": "end", "extra": "ignored"}') == End()


def test_server_messages_round_trip():
    msgs = [
        Ready(session="s1", sample_rate=16000, chain="voice", inputs=["audio"], outputs=["reply"]),
        Transcript(text="hi", final=False),
        TextOut(text="yo", name="reply"),
        Metrics(turn=2, first_text_ms=12.5, outputs=3),
        Error(code="bad_audio", message="odd"),
        Event(event="speech_started"),
        OutputMsg(name="entities", data={"x": [1, 2]}),
    ]
    for m in msgs:
        assert decode_server(encode(m)) == m
    assert msgspec.json.decode(encode(Metrics(turn=1)))["type"] == "metrics"
    assert msgspec.json.decode(encode(Error(code="c", message="m"))) == {
        "type": "error",
        "code": "c",
        "message": "m",
    }


def test_output_mapping_by_name_and_type():
    m = OutputMapper(out_rate=16000)
    t = 100.0
    frame = AudioFrame(pcm=tone(20, 24000), sample_rate=24000)
    out = m.map("transcript", Text(text="hello"), origin=t, epoch=0, now=t + 0.1)
    assert out == [Transcript(text="hello", final=True)]
    assert m.map("reply", TextDelta(text="hi "), t, 0, t + 0.2) == [TextOut(text="hi ", name="reply")]
    assert m.map("summary", Text(text="ok"), t, 0, t + 0.25) == [
        TextOut(text="ok", name="summary", final=True)
    ]
    assert m.map("audio", AudioFrame(pcm=tone(20, 16000), sample_rate=16000), t, 0, t + 0.3) == [
        tone(20, 16000)
    ]
    # resampled 24 kHz -> 16 kHz by soxr, which holds back its look-ahead: a frame's
    # samples may come out with the next frames (the connection flushes the rest)
    m2 = OutputMapper(out_rate=16000)
    pcm = b"".join(b for _ in range(5) for b in m2.map("audio", frame, t, 0, t + 0.3))
    assert 3 * 320 <= len(pcm) // 2 <= 5 * 320
    assert m.map("count", 3, t, 0, t + 0.3) == [OutputMsg(name="count", data=3)]
    assert m.map("error", ErrorEvent(node="llm", code="timeout", message="slow"), t, 0, t + 0.3) == [
        Error(code="timeout", message="slow", node="llm")
    ]
    assert m.map("events", SpeechStarted(), t, 0, t + 0.3) == [Event(event="speech_started")]
    # a new transcript after the reply closes the turn and summarises it
    out = m.map("transcript", Text(text="again"), origin=t + 1, epoch=0, now=t + 1.1)
    metrics, transcript = out
    assert transcript == Transcript(text="again")
    assert isinstance(metrics, Metrics) and metrics.turn == 1 and metrics.outputs == 5
    assert metrics.first_transcript_ms == pytest.approx(100.0)
    assert metrics.first_text_ms == pytest.approx(200.0)
    assert metrics.first_audio_ms == pytest.approx(300.0)
    assert metrics.audio_ms == pytest.approx(20.0, abs=0.2)
    # the chain's Interrupt closes the open turn as interrupted
    ev, interrupted = m.map("events", Interrupt(reason="vad"), t, 0, t + 1.2)
    assert ev == Event(event="interrupt", data={"reason": "vad"})
    assert isinstance(interrupted, Metrics) and interrupted.interrupted and interrupted.turn == 2
    assert m.close_turn(t + 2) == []
    # EndOfTurn closes a turn too; a new epoch starts a new one
    m.map("reply", TextDelta(text="a"), t + 3, 1, t + 3.1)
    assert isinstance(m.map("events", EndOfTurn(), t, 1, t + 3.2)[1], Metrics)


def test_event_names():
    assert event_name(SpeechStarted()) == "speech_started"
    assert event_name(EndOfTurn()) == "end_of_turn"
    assert event_name(Interrupt()) == "interrupt"
