"""Tools a chat model may call: typed Python functions, described to the model and
constrained in its reply.

A tool is a plain function, sync or async, whose parameters are annotated with types
msgspec can describe (``str``, ``int``, ``Literal[...]``, a ``msgspec.Struct``,
``list[...]``, ``X | None`` with a default...). Its name, its docstring's first
paragraph and an ``Args:`` section (``name: what it is``) describe it to the model;
the annotations become the JSON schema of its arguments. ``tool(fn, timeout_ms=...)``
sets a tool's own options; a bare function is a tool with the defaults.

Why a JSON turn: the model's reply in a tool-using chat is constrained (vLLM's
structured outputs) to exactly one of

    {"say": "the words to speak"}
    {"call": "<tool name>", "args": {<that tool's arguments>}}

so even a 135M-parameter model can only produce a plain reply or a call of a real
tool with arguments that validate; which one, and which words, is still the model's.
The keys are in that order and the engine writes compact JSON, so a reply that
speaks starts with the literal ``{"say":"`` and its words can be streamed while they
are generated (``SayStream``). ``tool_choice="required"`` allows only calls in a turn's
first round; a round where only words are left (the last, or every tool called) is
plain text (``nodes.toolturn``).

A call runs like a node call (``run_tool``): a timeout (the tool's budget), its
exceptions turned into an error result the model and the client see (the session
goes on), and cancellation when the turn is interrupted (barge-in); a sync tool runs
in a worker thread, abandoned on cancellation (a thread cannot be stopped).
"""

from __future__ import annotations

import inspect
import json
import re
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal, get_type_hints

import anyio
import msgspec

from chains.errors import ChainError

ToolChoice = Literal["auto", "required", "none"]
TOOL_CHOICES = ("auto", "required", "none")
SAY_PREFIX = '{"say":"'
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


class Tool:
    """A function the model may call: its name, description, argument type and schema."""

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        timeout_ms: float = 10_000,
        examples: Sequence[tuple[str, dict[str, Any]]] = (),
    ):
        if not callable(fn):
            raise ChainError(f"a tool must be a function, got {fn!r:.80}")
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "")
        if not NAME.match(self.name):
            raise ChainError(f"tool name {self.name!r} must be a Python identifier (a-z, 0-9, _)")
        if not timeout_ms > 0:
            raise ChainError(f"tool {self.name!r}: timeout_ms must be > 0, got {timeout_ms!r}")
        self.timeout_s = timeout_ms / 1000.0
        self.is_async = inspect.iscoroutinefunction(fn)
        doc = inspect.getdoc(fn) or ""
        self.description = doc.split("\n\n")[0].replace("\n", " ").strip()
        self.arg_docs = _arg_docs(doc)
        self.args_type = _args_type(self.name, fn)
        try:
            self.args_schema = msgspec.json.schema(self.args_type)
        except (TypeError, ValueError) as e:
            raise ChainError(f"tool {self.name!r}: its parameter types have no JSON schema: {e}") from e
        self.examples: list[tuple[str, str]] = []  # (what a user says, the call as the model writes it)
        for i, ex in enumerate(examples):
            try:
                text, args = ex
                valid = msgspec.convert(args, self.args_type)
            except (TypeError, ValueError, msgspec.ValidationError) as e:
                raise ChainError(
                    f"tool {self.name!r}: examples[{i}] must be (what a user says, its arguments): {e}"
                ) from e
            call = {"call": self.name, "args": msgspec.to_builtins(valid)}
            self.examples.append((str(text), msgspec.json.encode(call).decode()))

    def signature(self) -> str:
        """``name(arg: type, ...): description`` for the model's system prompt."""
        props = _inline(self.args_schema).get("properties", {})
        parts = []
        for k, v in props.items():
            t = _type_word(v)
            doc = self.arg_docs.get(k)
            parts.append(f"{k}: {t}" + (f" ({doc})" if doc else ""))
        return f"{self.name}({', '.join(parts)})" + (f": {self.description}" if self.description else "")

    def call_example(self) -> dict[str, Any]:
        return {
            "call": self.name,
            "args": {k: "..." for k in _inline(self.args_schema).get("properties", {})},
        }

    def __repr__(self) -> str:
        return f"<tool {self.signature()}>"


def tool(
    fn: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    timeout_ms: float = 10_000,
    examples: Sequence[tuple[str, dict[str, Any]]] = (),
) -> Any:
    """``@tool(...)`` or ``tool(fn, timeout_ms=2000, examples=[("Where is order 12?",
    {"order_id": "12"})])``: a function with a tool's options. ``examples`` are what a
    user might say and the arguments the call takes then; they are shown to the model
    as earlier turns (a small model follows examples far better than a description)."""
    if fn is None:
        return lambda f: Tool(f, name=name, timeout_ms=timeout_ms, examples=examples)
    return Tool(fn, name=name, timeout_ms=timeout_ms, examples=examples)


def example_turns(tools: Sequence[Tool]) -> list[dict[str, str]]:
    """The tools' examples as chat turns (user words, the call), interleaved by tool."""
    turns: list[dict[str, str]] = []
    for k in range(max((len(t.examples) for t in tools), default=0)):
        for t in tools:
            if k < len(t.examples):
                text, call = t.examples[k]
                turns += [{"role": "user", "content": text}, {"role": "assistant", "content": call}]
    return turns


def as_tools(tools: Sequence[Any] | None) -> list[Tool]:
    """``VLLMChat(tools=...)`` as ``Tool``s, checked (a ``ChainError`` at definition)."""
    if tools is None:
        return []
    if isinstance(tools, Tool) or callable(tools):
        raise ChainError("tools= takes a list of functions, e.g. tools=[lookup_order]")
    out = [t if isinstance(t, Tool) else Tool(t) for t in tools]
    names = [t.name for t in out]
    if len(set(names)) != len(names):
        raise ChainError(f"tools= names a tool twice: {names}")
    return out


def _arg_docs(doc: str) -> dict[str, str]:
    """``name: text`` lines of a docstring's ``Args:`` (or ``Parameters:``) section."""
    out: dict[str, str] = {}
    m = re.search(r"^(?:Args|Arguments|Parameters):\s*\n((?:[ \t]+.*\n?)+)", doc, re.M)
    if m:
        for line in m.group(1).splitlines():
            if (kv := re.match(r"\s+(\w+)(?:\s*\([^)]*\))?:\s*(.+)", line)) is not None:
                out[kv.group(1)] = kv.group(2).strip()
    return out


def _args_type(name: str, fn: Callable[..., Any]) -> type:
    """A msgspec Struct of the function's parameters (no extra keys allowed)."""
    try:
        hints = get_type_hints(fn, include_extras=True)
    except Exception as e:
        raise ChainError(f"tool {name!r}: cannot read its type hints: {e}") from e
    fields: list[Any] = []
    for p in inspect.signature(fn).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise ChainError(f"tool {name!r}: *{p.name} parameters cannot be described to a model")
        if p.name not in hints:
            raise ChainError(f"tool {name!r}: parameter {p.name!r} needs a type annotation")
        t = hints[p.name]
        fields.append((p.name, t) if p.default is p.empty else (p.name, t, p.default))
    return msgspec.defstruct(f"{name}_args", fields, forbid_unknown_fields=True, kw_only=True)


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if isinstance(ref, str):
        return schema.get("$defs", {}).get(ref.rsplit("/", 1)[-1], schema)
    return schema


def _type_word(s: dict[str, Any]) -> str:
    if "enum" in s:
        return " | ".join(json.dumps(v) for v in s["enum"])
    if "anyOf" in s:
        return " | ".join(_type_word(x) for x in s["anyOf"])
    if "$ref" in s:
        return "object"
    t = s.get("type", "any")
    return f"list of {_type_word(s.get('items', {}))}" if t == "array" else str(t)


# --- the model's turn: its schema, its text, its decoding -------------------------------
def turn_schema(tools: Sequence[Tool], *, say: bool, call: bool) -> dict[str, Any]:
    """The JSON schema a round's reply is constrained to: say, a call, or either."""
    branches: list[dict[str, Any]] = []
    defs: dict[str, Any] = {}
    if say:
        branches.append({"type": "object", "properties": {"say": {"type": "string"}}, "required": ["say"]})
    if call:
        for t in tools:
            s = dict(t.args_schema)
            defs.update(s.pop("$defs", {}))
            branches.append(
                {
                    "type": "object",
                    "properties": {"call": {"const": t.name}, "args": s},
                    "required": ["call", "args"],
                }
            )
    if not branches:
        raise ValueError("a turn must allow a reply or a call")
    top: dict[str, Any] = branches[0] if len(branches) == 1 else {"anyOf": branches}
    return {**top, "$defs": defs} if defs else top


def tools_prompt(system: str, tools: Sequence[Tool]) -> str:
    """The system prompt of a tool-using chat: the user's, the tools, the reply format."""
    lines = "\n".join(f"- {t.signature()}" for t in tools)
    example = json.dumps(tools[0].call_example(), separators=(",", ":"))
    return (
        f"{system}\n\nTools you can call:\n{lines}\n"
        f'Reply in JSON: {{"say":"..."}} to speak to the user, or {example} to call a tool. '
        "After a tool result, tell the user the answer in words."
    )


class Say(msgspec.Struct, frozen=True):
    text: str


class Call(msgspec.Struct, frozen=True):
    tool: Tool
    args: Any  # the tool's args Struct, validated


def decode_turn(text: str, tools: Sequence[Tool]) -> Say | Call:
    """The reply of one round; ``ValueError`` when it is neither (a reply cut short)."""
    try:
        obj = json.loads(text)
    except ValueError as e:
        raise ValueError(f"not a complete JSON reply ({e}): {text[-80:]!r}") from e
    if isinstance(obj, dict) and isinstance(obj.get("say"), str):
        return Say(obj["say"])
    by_name = {t.name: t for t in tools}
    if not isinstance(obj, dict) or obj.get("call") not in by_name:
        raise ValueError(f"neither a reply nor a call of {sorted(by_name)}: {text[-80:]!r}")
    t = by_name[obj["call"]]
    try:
        return Call(t, msgspec.convert(obj.get("args", {}), t.args_type))
    except msgspec.ValidationError as e:
        raise ValueError(f"arguments of {t.name}: {e}") from e


class SayStream:
    """The words of a ``{"say":"..."}`` reply as it streams in, JSON escapes decoded;
    nothing for a call. ``feed(delta)`` returns the new words."""

    def __init__(self) -> None:
        self.raw = ""
        self.text = ""  # the words decoded so far
        self.sent = 0  # characters of them already returned
        self.done = False

    def feed(self, delta: str) -> str:
        self.raw += delta
        if self.done or not self.raw.startswith(SAY_PREFIX):
            return ""
        body, self.done = _scan(self.raw[len(SAY_PREFIX) :])
        self.text = json.loads(f'"{body}"')
        new, self.sent = self.text[self.sent :], len(self.text)
        return new


def _scan(body: str) -> tuple[str, bool]:
    """(the part of a JSON string body that decodes now, whether the string ended): a
    trailing part escape (``\\``, ``\\u12``) or the first half of a surrogate pair waits."""
    i = 0
    while i < len(body):
        c = body[i]
        if c == '"':
            return body[:i], True
        if c != "\\":
            i += 1
            continue
        need = 6 if body[i + 1 : i + 2] == "u" else 2
        if i + need > len(body):
            return body[:i], False
        if need == 6 and body[i + 2 : i + 4].lower() in ("d8", "d9", "da", "db") and i + 12 > len(body):
            return body[:i], False  # a high surrogate: wait for its pair
        i += need
    return body, False


def result_text(value: Any, error: str | None) -> str:
    """A call's result as the model reads it: ``key: value, ...`` for an object, the
    text for a string, ``error: ...``. Measured on SmolLM2-135M (six order and
    call-back lines): answers quoted ``status: being packed, arrives: next Monday``
    from this form, but a date or the tool's name from the same result as JSON."""
    if error is not None:
        return f"error: {error}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {result_text(v, None)}" for k, v in value.items())
    if isinstance(value, list):
        return "; ".join(result_text(v, None) for v in value)
    return value if isinstance(value, str) else json.dumps(value)


# --- running a call ---------------------------------------------------------------------
class Outcome(msgspec.Struct, frozen=True):
    """What a call gave: its value (JSON-able) or its error, and how long it took."""

    value: Any = None
    error: str | None = None
    code: str = ""
    elapsed_ms: float = 0.0


async def run_tool(t: Tool, args: Any) -> Outcome:
    """Run one call under the tool's timeout; its exception or timeout is an error
    ``Outcome`` (the conversation goes on); cancellation (barge-in) propagates."""
    kwargs = {f: getattr(args, f) for f in args.__struct_fields__}
    t0 = time.perf_counter()

    def ms() -> float:
        return round(1000.0 * (time.perf_counter() - t0), 2)

    try:
        with anyio.fail_after(t.timeout_s):
            if t.is_async:
                value = await t.fn(**kwargs)
            else:
                value = await anyio.to_thread.run_sync(lambda: t.fn(**kwargs), abandon_on_cancel=True)
    except TimeoutError:
        return Outcome(
            error=f"{t.name} took longer than {t.timeout_s * 1000:.0f} ms",
            code="tool_timeout",
            elapsed_ms=ms(),
        )
    except Exception as e:
        return Outcome(error=f"{type(e).__name__}: {e}", code="tool_error", elapsed_ms=ms())
    try:
        value = msgspec.to_builtins(value)
    except TypeError:
        value = repr(value)
    return Outcome(value=value, elapsed_ms=ms())
