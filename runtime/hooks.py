"""The optional hooks a class node may define, each a pure function of one item (a
``staticmethod`` or ``classmethod``), which the runtime calls wherever the node's
batcher and router run: in process, and on the host of a remote or Ray replica.

- ``route_tokens(item)``: the tokens a prefix-aware router places the item by;
- ``known_result(item)``: a result other than None answers the item at once, without
  joining a batch whose items all wait for the slowest;
- ``batch_priority(item)``: an int, lower first; items of different priorities never
  share a batch, and the next batch takes the most urgent priority waiting (a final
  transcription never waits in one pass with a best-effort interim one).

Plain methods are not hooks: they would need a replica's instance, which may live in
another process.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from chains.spec import NodeSpec

HOOKS = ("route_tokens", "known_result", "batch_priority")


def static_hook(spec: NodeSpec, name: str) -> Callable[..., Any] | None:
    """The class node's hook ``name`` (one of ``HOOKS``), or None."""
    assert name in HOOKS, name
    if not spec.is_class:
        return None
    raw = inspect.getattr_static(spec.impl, name, None)
    if isinstance(raw, staticmethod | classmethod):
        fn: Callable[..., Any] = getattr(spec.impl, name)
        return fn
    return None


__all__ = ["HOOKS", "static_hook"]
