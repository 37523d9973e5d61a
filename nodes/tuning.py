"""A session's own turn-detection knobs for the VAD (an OpenAI Realtime client's
``session.update`` ``audio.input.turn_detection``: ``server_vad`` with ``threshold``,
``silence_duration_ms``, ``prefix_padding_ms``, ``interrupt_response``).

Why: the VAD is one node for every session, its knobs set when the chain is defined;
a Realtime client sets them per session, at any time. The transport puts them in the
session's ``meta`` under ``KEY`` (a new dict at each update); the VAD of such a session
turns on a copy of its ``TurnTaking`` that takes the knobs as they change, between two
audio frames. Sessions that never set knobs use the node's own (and count into its
figures, which a copy does not).
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from typing import Any

import chains
from chains import AudioFrame
from nodes.turn import TurnTaking

KEY = "turn_detection"


def tune(turning: TurnTaking, knobs: dict[str, Any]) -> None:
    """Apply Realtime ``server_vad`` knobs to a (per-session) ``TurnTaking``."""
    ms = turning.rate / 1000
    if isinstance(knobs.get("threshold"), int | float):
        turning.threshold = float(knobs["threshold"])
        turning.neg_threshold = max(0.01, turning.threshold - 0.15)
    if isinstance(knobs.get("silence_duration_ms"), int | float) and knobs["silence_duration_ms"] > 0:
        silence = float(knobs["silence_duration_ms"])
        turning.min_silence_ms = silence
        turning.eot_min_ms = min(turning.eot_min_ms, silence)
        turning.eot_max_ms = max(turning.eot_max_ms, silence)
    if isinstance(knobs.get("prefix_padding_ms"), int | float):
        turning.pad_windows = max(1, int(knobs["prefix_padding_ms"] * ms) // turning.window)
    if isinstance(knobs.get("interrupt_response"), bool):
        turning.interrupt = knobs["interrupt_response"]


def for_session(turning: TurnTaking, frames: AsyncIterator[AudioFrame]) -> tuple[TurnTaking, Any]:
    """The ``TurnTaking`` and frames a VAD call should use in the current session."""
    try:
        meta = chains.context().meta
    except RuntimeError:  # outside a runtime
        return turning, frames
    if meta.get("transport") != "realtime" and KEY not in meta:
        return turning, frames
    own = copy.copy(turning)
    return own, _tuned(frames, own, meta)


async def _tuned(frames: AsyncIterator[AudioFrame], turning: TurnTaking, meta: dict[str, Any]) -> Any:
    seen: Any = None
    async for frame in frames:
        knobs = meta.get(KEY)
        if knobs is not seen:
            seen = knobs
            if isinstance(knobs, dict):
                tune(turning, knobs)
        yield frame


__all__ = ["KEY", "for_session", "tune"]
