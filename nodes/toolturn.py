"""One chat turn with tools: rounds of (the model speaks or calls a tool) until it speaks.

Why apart from the engine: the loop is the same whatever generates the rounds, so
``VLLMChat`` plugs its engine in (``RoundModel.round``) and the unit tests a scripted
fake with controlled timing (tests/test_tools.py).

Each round the model's reply is constrained (``nodes.tools.turn_schema``): in the first
round of a ``"required"`` turn only a call; otherwise a reply or a call; in the last
round (``max_rounds``), or when every tool has been called, the reply is plain words
(``schema=None``; ``VLLMChat`` only keeps JSON's brackets out). Measured on
SmolLM2-135M: asked for the reply inside ``{"say": ...}`` after a tool result, it
wrote "showdeshiped, eastered, eastered" where in plain words it answered from the
result (measured by the project's tool-call benchmark). A reply's words stream out as
``TextDelta``s while they are generated; a call yields ``ToolCall``, runs
(``nodes.tools.run_tool``: timeout, errors as results, cancelled with the turn),
yields ``ToolResult``, and its result goes into the next round's prompt.
``Turn.messages`` holds what the turn has added so far (calls, results, the reply
said up to now), for the history, also when the turn is cut.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

import msgspec

import chains
from chains.messages import TextDelta, ToolCall, ToolResult
from nodes.tools import Call, SayStream, Tool, ToolChoice, decode_turn, result_text, run_tool, turn_schema

_ids = itertools.count(1)


class RoundModel(Protocol):
    def round(self, pending: list[dict[str, Any]], schema: dict[str, Any] | None) -> AsyncIterator[str]:
        """Generate one round's reply text (streamed deltas) to the conversation so far
        plus ``pending`` (this turn's messages after the user's), constrained to ``schema``
        (None: free text)."""
        ...


class Turn:
    """What one turn has added to the conversation, and its counters."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []  # calls and results: complete rounds
        self.reply = ""  # the words of the reply said so far
        self.running: str | None = None  # the tool running now (a cut turn cancels it)
        self.calls = 0
        self.errors = 0

    def said(self) -> list[dict[str, Any]]:
        """The turn's messages, with the reply's words said so far (if any)."""
        reply = [{"role": "assistant", "content": self.reply}] if self.reply else []
        return [*self.messages, *reply]


def round_schema(tools: Sequence[Tool], choice: ToolChoice, k: int, max_rounds: int) -> dict[str, Any] | None:
    """Round ``k``'s constraint over the tools it may still call: only a call in the
    first round of a "required" turn; either a reply or a call; or, in the last round
    or when no tool is left, None: the reply in plain words, unconstrained."""
    last = k == max_rounds - 1
    call = bool(tools) and choice != "none" and not last
    if not call:
        return None
    say = not (choice == "required" and k == 0)
    return turn_schema(tools, say=say, call=call)


async def run_turn(
    model: RoundModel,
    tools: Sequence[Tool],
    choice: ToolChoice,
    max_rounds: int,
    turn: Turn,
    node: str = "VLLMChat",
) -> AsyncIterator[TextDelta | ToolCall | ToolResult]:
    """The turn's outputs: the reply's words, and each tool call and its result."""
    left = list(tools)  # a tool is called at most once a turn: a small model repeats calls
    for k in range(max_rounds):
        schema = round_schema(left, choice, k, max_rounds)
        if schema is None:  # only words are left to say: plain text, as the model chats
            async for delta in model.round(turn.messages, None):
                turn.reply += delta
                yield TextDelta(text=delta)
            break
        stream = SayStream()
        async for delta in model.round(turn.messages, schema):
            words = stream.feed(delta)
            if words:
                turn.reply = stream.text
                yield TextDelta(text=words)
        try:
            reply = decode_turn(stream.raw, tools)
        except ValueError as e:
            if stream.raw.startswith('{"say":"'):  # a reply cut by max_tokens: said as far as it got
                break
            raise chains.NodeError(
                node, f"the model's tool call was cut or invalid: {e}", code="reply_cut"
            ) from e
        if not isinstance(reply, Call):
            break
        left.remove(reply.tool)
        call_id = f"call_{next(_ids)}"
        args = {f: getattr(reply.args, f) for f in reply.args.__struct_fields__}
        turn.calls += 1
        turn.messages.append(
            {
                "role": "assistant",
                "content": stream.raw,
                "tool_call": {"id": call_id, "name": reply.tool.name},
            }
        )
        yield ToolCall(id=call_id, name=reply.tool.name, args=_builtins(args))
        turn.running = reply.tool.name
        try:
            outcome = await run_tool(reply.tool, reply.args)
        except BaseException:  # cut (barge-in): the history says so, not a call left hanging
            turn.messages.append(_tool_message(reply.tool.name, call_id, "error: cancelled (the user spoke)"))
            raise
        turn.running = None
        if outcome.error is not None:
            turn.errors += 1
        content = result_text(outcome.value, outcome.error)
        turn.messages.append(_tool_message(reply.tool.name, call_id, content))
        yield ToolResult(
            id=call_id,
            name=reply.tool.name,
            result=outcome.value,
            error=outcome.error,
            code=outcome.code,
            elapsed_ms=outcome.elapsed_ms,
        )
    yield TextDelta(text="", final=True)


def _tool_message(name: str, call_id: str, content: str) -> dict[str, Any]:
    return {"role": "tool", "name": name, "tool_call_id": call_id, "content": content}


def _builtins(args: dict[str, Any]) -> dict[str, Any]:
    return msgspec.to_builtins(args)
