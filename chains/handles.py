"""``Handle``: what a node's output (or a chain input) is while a chain body runs.

A handle only wires nodes together; it has no value yet. Using it as a value (an
attribute, an operator, ``if``, iterating) raises a ``DefinitionError`` at the line
that did it, saying that value logic belongs in a node.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from typing import Any

from chains.errors import ChainError
from chains.spec import describe_type

_PKG_DIR = os.path.dirname(os.path.abspath(__file__))


def call_site() -> str:
    """file:line of the nearest frame outside the chains package."""
    frame = inspect.currentframe()
    while frame is not None:
        fname = frame.f_code.co_filename
        if not os.path.abspath(fname).startswith(_PKG_DIR):
            return f"{fname}:{frame.f_lineno}"
        frame = frame.f_back
    return "<unknown>"


@dataclass(eq=False)
class Handle:
    """A symbolic edge source: the output of ``node`` (or chain input ``input``)."""

    graph: Any  # the chains.graph.Graph being built (not imported: graph.py imports this module)
    source: int  # node index, or -(input index + 1) for a chain input
    type: Any
    stream: bool  # many items per session, or exactly one
    where: str
    label: str

    def __repr__(self) -> str:
        kind = "Stream" if self.stream else "value"
        return f"<chains handle {self.label}: {kind}[{describe_type(self.type)}]>"

    def __bool__(self) -> bool:
        raise ChainError(
            f"{self.label} is a symbolic handle: branch on data inside a node, not in the chain",
            where=call_site(),
        )

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)  # protocols (copy, pickle, ...) probe for these
        raise HandleMisuse(self, f"`.{name}`")

    def __getitem__(self, key: Any) -> Any:
        raise HandleMisuse(self, f"`[{key!r}]`")

    def __iter__(self) -> Any:
        raise HandleMisuse(self, "iterating over it (or unpacking it)")

    def __len__(self) -> int:
        raise HandleMisuse(self, "`len()`")

    def __contains__(self, item: Any) -> bool:
        raise HandleMisuse(self, "`in`")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise HandleMisuse(self, "calling it")


def _operator(symbol: str) -> Any:
    def op(self: Handle, *other: Any) -> Any:
        raise HandleMisuse(self, f"`{symbol}`")

    return op


for _name, _symbol in (
    ("add", "+"),
    ("sub", "-"),
    ("mul", "*"),
    ("matmul", "@"),
    ("truediv", "/"),
    ("floordiv", "//"),
    ("mod", "%"),
    ("pow", "**"),
    ("and", "&"),
    ("or", "|"),
    ("xor", "^"),
    ("lshift", "<<"),
    ("rshift", ">>"),
):
    setattr(Handle, f"__{_name}__", _operator(_symbol))
    setattr(Handle, f"__r{_name}__", _operator(_symbol))
for _name, _symbol in (("lt", "<"), ("le", "<="), ("gt", ">"), ("ge", ">="), ("neg", "-"), ("pos", "+")):
    setattr(Handle, f"__{_name}__", _operator(_symbol))
for _name in ("int", "float", "index", "round"):
    setattr(Handle, f"__{_name}__", _operator(f"{_name}()"))


class HandleMisuse(ChainError, AttributeError, TypeError):
    """A node's output used as a value in a chain body (``out.text``, ``out + "!"``).

    A ``DefinitionError`` at the line that did it; also an ``AttributeError`` and a
    ``TypeError`` so that ``hasattr`` and the operators' protocols still work."""

    def __init__(self, handle: Handle, what: str):
        subject = handle.label if handle.source < 0 else f"the output of {handle.label}"
        super().__init__(
            f"{what} on {subject}: while a chain is defined it has no value yet (it is a "
            "handle that the body wires to other nodes). The chain body only "
            "wires nodes together; value logic belongs in a node: write an @chains.node that "
            "takes this output and does it, and call it on the output here",
            where=call_site(),
        )


__all__ = ["Handle", "HandleMisuse", "call_site"]
