"""nodes/tuning.py: a Realtime session's server_vad knobs reach the VAD's turn taking,
on a per-session copy, as they change between frames (no model: TurnTaking alone)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from chains import AudioFrame
from chains.context import NodeContext, reset_context, set_context
from nodes import tuning
from nodes.turn import TurnTaking


def test_tune_maps_the_knobs() -> None:
    t = TurnTaking(threshold=0.5, min_silence_ms=500, pad_ms=200, rate=16000, window=512)
    tuning.tune(
        t,
        {
            "type": "server_vad",
            "threshold": 0.7,
            "silence_duration_ms": 1200,
            "prefix_padding_ms": 480,
            "interrupt_response": False,
        },
    )
    assert t.threshold == 0.7 and abs(t.neg_threshold - 0.55) < 1e-9
    assert t.min_silence_ms == 1200 and t.eot_max_ms >= 1200
    assert t.pad_windows == 480 * 16 // 512 and t.interrupt is False


async def test_a_realtime_session_gets_its_own_copy_tuned_as_knobs_change() -> None:
    node = TurnTaking(threshold=0.5, rate=16000, window=512)
    meta: dict = {"transport": "realtime"}
    frame = AudioFrame(pcm=b"\x00\x00" * 160, sample_rate=16000)

    async def frames() -> AsyncIterator[AudioFrame]:
        yield frame
        meta[tuning.KEY] = {"type": "server_vad", "threshold": 0.9}  # a session.update mid-stream
        yield frame
        yield frame

    token = set_context(NodeContext("s1", "SileroVAD", {}, lambda: 0, meta))
    try:
        own, tuned = tuning.for_session(node, frames())
        seen = []
        async for _ in tuned:
            seen.append(own.threshold)
    finally:
        reset_context(token)
    assert own is not node and node.threshold == 0.5
    assert seen == [0.5, 0.9, 0.9]


def test_other_sessions_use_the_node_itself() -> None:
    node = TurnTaking(rate=16000, window=512)
    token = set_context(NodeContext("s1", "SileroVAD", {}, lambda: 0, {"transport": "websocket"}))
    try:
        own, _ = tuning.for_session(node, None)  # type: ignore[arg-type]
    finally:
        reset_context(token)
    assert own is node
