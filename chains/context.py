"""What a running node can learn about the call it is serving.

``chains.context()`` returns the session id, the turn epoch and a dict private to
this session and this node (a chat history, a VAD state). The runtime sets it
around every call; a node never receives it as an argument, so its signature stays
the plain data signature the compiler checks.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import Any


class NodeContext:
    """The session a node call serves: its id, its current turn epoch, a dict
    private to this (session, node) pair (``state``), and the session's settings
    shared by every node (``meta``: e.g. ``output_sample_rate`` a client asked for)."""

    __slots__ = ("_epoch", "cached_tokens", "meta", "node", "session_id", "state")

    def __init__(
        self,
        session_id: str,
        node: str,
        state: dict[str, Any],
        epoch: Callable[[], int],
        meta: dict[str, Any] | None = None,
    ):
        self.session_id = session_id
        self.node = node
        self.state = state
        self._epoch = epoch
        self.meta = meta if meta is not None else {}
        # (An item's deadline is not here: it travels in the replica call's Request,
        # runtime/envelope.py, so it crosses a process boundary with the item.)
        # An LLM node that learns how many prompt tokens its engine served from the KV
        # cache for the item in hand sets this (vLLM's ``num_cached_tokens``); the runtime
        # reads it after the call to check its prefix-aware router's prediction.
        self.cached_tokens: int | None = None

    @property
    def epoch(self) -> int:
        return self._epoch()

    def __repr__(self) -> str:
        return f"NodeContext(session_id={self.session_id!r}, node={self.node!r}, epoch={self.epoch})"


_current: contextvars.ContextVar[NodeContext | None] = contextvars.ContextVar(
    "chains_node_context", default=None
)


def context() -> NodeContext:
    """The context of the node call in progress (raises outside a node call)."""
    ctx = _current.get()
    if ctx is None:
        raise RuntimeError("chains.context() is only available inside a running node")
    return ctx


def current_context() -> NodeContext | None:
    """The context of the node call in progress, or None (the runtime's own use)."""
    return _current.get()


def set_context(ctx: NodeContext | None) -> contextvars.Token:
    return _current.set(ctx)


def reset_context(token: contextvars.Token) -> None:
    _current.reset(token)
