"""The envelope around every item on an edge; users never see it.

It carries what the runtime needs to keep budgets and turns: the item's sequence
number in its session, when the input that caused it arrived (``origin``), its
deadline, and the turn epoch it belongs to. Immutable, so fan-out shares one.
"""

from __future__ import annotations

from typing import Any

import msgspec


class Envelope(msgspec.Struct, frozen=True, gc=False):
    payload: Any
    seq: int
    origin: float  # time.monotonic() when the causing input arrived
    deadline: float  # time.monotonic() by which the chain's output is due (inf: none)
    epoch: int  # the session's turn epoch when the causing input arrived


class Usage(msgspec.Struct, frozen=True, array_like=True, omit_defaults=True):
    """What serving one item used, as the replica that served it reports it (in this
    process, across a remote link, from a Ray actor): ``cached_tokens`` is how many
    prompt tokens an LLM engine served from its prefix cache (vLLM's
    ``num_cached_tokens``), which a prefix-aware router checks its prediction against."""

    cached_tokens: int | None = None
