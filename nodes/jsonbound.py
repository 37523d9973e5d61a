"""The longest reply a JSON schema allows, in characters, or why it has none.

Why: a schema-constrained reply can only be cut by ``max_tokens`` if the schema lets it
be longer than that. When every string has a ``maxLength``, every number bounds, every
list a ``maxItems`` (and the JSON is compact: the engine writes no free whitespace,
``nodes.vllm_engine.structured_config``), the reply's length has a ceiling, and since
every token is at least one character that ceiling is also a token bound: the
extractor uses it as its default ``max_tokens``, so such a reply is never cut. Where
the schema is unbounded the answer names the field that makes it so, for the error a
cut reply raises.

Counted for the worst case: every character of a string escaped as ``\\uXXXX`` (six
characters), every optional property present.
"""

from __future__ import annotations

import json
from typing import Any

Bound = tuple[int | None, str]  # (characters, or None; why unbounded: a JSON path)

ESCAPED = 6  # "\\u00e9": the most characters one string character can take in JSON


def max_chars(schema: dict[str, Any]) -> Bound:
    """(the longest compact JSON text ``schema`` admits, "") or (None, the path of a field
    that has no bound, e.g. ``"$.notes (a string without maxLength)"``)."""
    return _walk(schema, schema.get("$defs", {}), "$", frozenset())


def _walk(s: Any, defs: dict[str, Any], path: str, seen: frozenset[str]) -> Bound:
    if s is True or s == {}:
        return None, f"{path} (any value)"
    if not isinstance(s, dict):
        return None, f"{path} (a schema of {type(s).__name__})"
    ref = s.get("$ref")
    if isinstance(ref, str):
        name = ref.rsplit("/", 1)[-1]
        if name in seen or name not in defs:
            return None, f"{path} (a recursive type {name})"
        return _walk(defs[name], defs, path, seen | {name})
    if "const" in s:
        return len(json.dumps(s["const"], separators=(",", ":"))), ""
    if "enum" in s:
        return max(len(json.dumps(v, separators=(",", ":"))) for v in s["enum"]), ""
    for key in ("anyOf", "oneOf"):
        if key in s:
            return _most([_walk(x, defs, path, seen) for x in s[key]])
    t = s.get("type")
    if isinstance(t, list):
        return _most([_walk({**s, "type": x}, defs, path, seen) for x in t])
    if t == "null":
        return 4, ""
    if t == "boolean":
        return 5, ""
    if t == "string":
        n = s.get("maxLength")
        if n is None:
            return None, f"{path} (a string without maxLength)"
        return 2 + ESCAPED * int(n), ""
    if t == "integer":
        lo, hi = s.get("minimum", s.get("exclusiveMinimum")), s.get("maximum", s.get("exclusiveMaximum"))
        if lo is None or hi is None:
            return None, f"{path} (an integer without both minimum and maximum)"
        return max(len(str(int(lo))), len(str(int(hi)))), ""
    if t == "number":
        return None, f"{path} (a float: its digits have no bound)"
    if t == "array":
        if "maxItems" not in s:
            return None, f"{path} (a list without max_length)"
        k = int(s["maxItems"])
        if k == 0:
            return 2, ""
        n, why = _walk(s.get("items", {}), defs, f"{path}[]", seen)
        return (None, why) if n is None else (2 + k * n + (k - 1), "")
    if t == "object" or "properties" in s:
        props = s.get("properties", {})
        extra = s.get("additionalProperties")
        if extra not in (None, False) and not (extra is True and not props):
            return None, f"{path} (an object with open keys)"
        total = 2 + max(0, len(props) - 1)  # braces, commas
        for key, sub in props.items():
            n, why = _walk(sub, defs, f"{path}.{key}", seen)
            if n is None:
                return None, why
            total += len(json.dumps(key)) + 1 + n
        return total, ""
    return None, f"{path} (a schema without a type)"


def _most(bounds: list[Bound]) -> Bound:
    for n, why in bounds:
        if n is None:
            return None, why
    return max(n for n, _ in bounds if n is not None), ""
