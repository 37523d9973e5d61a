"""A chain's inputs from a JSON body, and its result as JSON: the conversions the HTTP
endpoints share.

Inputs: a JSON object of the chain's inputs by name; a single-input chain also takes
the bare value (``{"text": "..."}`` for a ``Text`` input, or just ``"..."``). A value
input is converted to its type with msgspec (a bare string is a ``Text``); a stream
input takes a JSON list of items. A wrong body is a 422 naming the field.

Outputs: by name, a single output bare, each value msgspec-encoded as is.
"""

from __future__ import annotations

from typing import Any

import msgspec

from chains.messages import Text
from transport.audioin import audio_input_of
from transport.httpapi.common import HttpError, validation_error


def as_input(data: Any, want: Any) -> Any:
    """A JSON value as a chain input's type ``want`` (``Any`` passes through; a bare
    string is a ``Text``); ``msgspec.ValidationError`` when it is not one. The HTTP API
    and the websocket protocol's `input` message both convert with it."""
    if want is Any or want is object:
        return data
    if isinstance(want, type) and issubclass(want, Text) and isinstance(data, str):
        return want(text=data)
    return msgspec.convert(data, want)


def convert(data: Any, want: Any, where: str, what: str) -> Any:
    """``as_input``, a wrong value as a 422 naming the field."""
    try:
        return as_input(data, want)
    except msgspec.ValidationError as e:
        raise validation_error(e, where, what) from None


def chain_inputs(graph: Any, body: Any) -> tuple[Any, ...]:
    """The positional inputs of one call of ``graph`` from a decoded JSON body."""
    inputs = graph.inputs
    names = [i.name for i in inputs]
    audio = audio_input_of(graph)
    if audio is not None:
        raise HttpError(
            422,
            "audio_input",
            f"chain {graph.name!r} takes audio ({names[audio]!r}): use the websocket protocol, "
            "or POST a wav to /v1/audio/transcriptions",
            param=names[audio],
        )
    by_name = isinstance(body, dict) and set(body) == set(names)
    if len(inputs) == 1 and not by_name:
        return (_one(inputs[0], body, "", graph.name),)
    if not isinstance(body, dict):
        raise HttpError(
            422,
            "bad_input",
            f"chain {graph.name!r} takes {len(names)} inputs: send a JSON object with "
            + ", ".join(repr(n) for n in names),
        )
    missing = [n for n in names if n not in body]
    if missing:
        raise HttpError(422, "missing_input", f"missing input {missing[0]!r}", param=missing[0])
    extra = [k for k in body if k not in names]
    if extra:
        raise HttpError(
            422,
            "unknown_input",
            f"no input {extra[0]!r}; chain {graph.name!r} has: {', '.join(names)}",
            param=extra[0],
        )
    return tuple(_one(inp, body[inp.name], f".{inp.name}", graph.name) for inp in inputs)


def _one(inp: Any, data: Any, where: str, chain: str) -> Any:
    what = f"input {inp.name!r}"
    if not inp.stream:
        return convert(data, inp.type, where, what)
    if not isinstance(data, list):
        raise HttpError(
            422,
            "bad_input",
            f"{what} is a stream: send a JSON list of its items, got {type(data).__name__}",
            param=where.lstrip(".") or inp.name,
        )
    return [convert(item, inp.type, f"{where}[{i}]", what) for i, item in enumerate(data)]


def outputs_by_name(graph: Any, result: Any) -> Any:
    """``rt.call``'s result as the HTTP answer: outputs by name, a single one bare."""
    names = list(graph.outputs)
    if isinstance(result, tuple) and len(result) == len(names):
        result = dict(zip(names, result, strict=True))
    if len(names) == 1:
        return result.get(names[0]) if isinstance(result, dict) and set(result) == set(names) else result
    return result


__all__ = ["chain_inputs", "convert", "outputs_by_name"]
