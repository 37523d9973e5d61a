"""Tools on a scripted engine: ``VLLMChat``'s own turn logic (rounds, constraints,
events, history, errors, timeouts, barge-in) with its engine replaced by a script of
replies whose timing the test controls. The real model: tests/integration/test_tools.py."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Sequence
from typing import Any, Literal

import anyio
import msgspec
import pytest

import chains
from chains import Text, TextDelta, ToolCall, ToolResult
from chains.outputs import ERROR, EVENTS
from nodes import VLLMChat
from nodes.chat_session import ChatSession
from nodes.llm import PLAIN_WORDS
from nodes.tools import SayStream, as_tools, decode_turn, tool, turn_schema
from tests.fakes import drain, wait_until
from transport.outputs import OutputMapper
from transport.protocol import Error, Event


class Script:
    """The engine: per round, the reply text to stream (in chunks), and what it was asked."""

    def __init__(self, rounds: Sequence[str], chunk: int = 5):
        self.rounds = list(rounds)
        self.chunk = chunk
        self.asked: list[tuple[list[dict[str, Any]], dict[str, Any] | None]] = []
        self.chats: list[Any] = []
        self.structured: list[dict[str, Any]] = []  # what each round asked vLLM for


class ScriptedChat(VLLMChat.spec.impl):  # type: ignore[misc,name-defined]
    """VLLMChat with a script for an engine (no model, no tokenizer)."""

    def __init__(self, script: Script, tools: Sequence[Any] = (), tool_choice: str = "auto", rounds: int = 3):
        self.script = script
        script.chats.append(self)
        self.configure("Be brief.", 4, tools, tool_choice, rounds)  # type: ignore[arg-type]

    def node_name(self) -> str:
        return "chat"

    async def setup(self) -> None:  # no engine to start
        pass

    async def close(self) -> None:
        pass

    def alive(self) -> bool:
        return True

    async def _generate(self, session, user, pending, structured=None) -> AsyncIterator[str]:  # type: ignore[override]
        s = self.script
        s.asked.append(([dict(m) for m in pending], structured.get("json")))  # None: a words-only round
        s.structured.append(structured)
        reply = s.rounds.pop(0)
        for k in range(0, len(reply), s.chunk):
            await asyncio.sleep(0)
            yield reply[k : k + s.chunk]


Chat = chains.node(concurrency=4, name="chat")(ScriptedChat)

ORDERS = {"4512": {"status": "shipped", "arrives": "Friday"}}


def lookup_order(order_id: str) -> dict:
    """Look up an order's status.

    Args:
        order_id: the order number
    """
    return ORDERS.get(order_id, {"status": "not found"})


def say(text: str) -> str:
    return json.dumps({"say": text}, separators=(",", ":"))


def call(name: str, **args: Any) -> str:
    return json.dumps({"call": name, "args": args}, separators=(",", ":"))


def chain_of(script: Script, tools: Sequence[Any], choice: str = "auto", rounds: int = 3) -> chains.Chain:
    template = Chat(script, tools, choice, rounds)

    @chains.chain
    def agent(t: Text):
        return {"reply": template(t)}

    return agent


def reply_text(outs: list[chains.Output]) -> str:
    return "".join(o.value.text for o in outs if o.name == "reply" and isinstance(o.value, TextDelta))


# --- the tool's schema and the turn format -------------------------------------------------
class Slot(msgspec.Struct):
    day: Literal["mon", "tue"]
    hour: int


async def book(phone: str, slot: Slot, note: str | None = None) -> str:
    """Book a call back.

    Args:
        phone: the number to call
        slot: when
    """
    return "ok"


def test_a_typed_function_gives_the_tools_schema_and_description() -> None:
    (t,) = as_tools([book])
    assert t.is_async and t.name == "book" and t.description == "Book a call back."
    assert t.arg_docs == {"phone": "the number to call", "slot": "when"}
    assert "phone: string (the number to call)" in t.signature()
    args = msgspec.json.decode(b'{"phone":"1","slot":{"day":"mon","hour":9}}', type=t.args_type)
    assert args.slot == Slot("mon", 9) and args.note is None
    with pytest.raises(msgspec.ValidationError):  # unknown keys are refused, like the grammar does
        msgspec.convert({"phone": "1", "slot": {"day": "mon", "hour": 9}, "x": 1}, t.args_type)


def test_bad_tools_fail_when_the_chain_is_defined() -> None:
    def untyped(x):  # type: ignore[no-untyped-def]
        return x

    with pytest.raises(chains.ChainError, match="'x' needs a type annotation"):
        VLLMChat(tools=[untyped])
    with pytest.raises(chains.ChainError, match="tool_choice must be one of"):
        VLLMChat(tools=[lookup_order], tool_choice="always")
    with pytest.raises(chains.ChainError, match="names a tool twice"):
        VLLMChat(tools=[lookup_order, lookup_order])
    with pytest.raises(chains.ChainError, match="needs tools"):
        VLLMChat(tool_choice="required")
    with pytest.raises(chains.ChainError, match="no schema"):
        VLLMChat(tools=[lookup_order], choice=["a", "b"])
    with pytest.raises(chains.ChainError, match=r"examples\[0\]"):
        tool(lookup_order, examples=[("where is it", {"order": 1})])


def test_the_turn_schema_allows_a_reply_or_a_valid_call_and_nothing_else() -> None:
    tools = as_tools([lookup_order, book])
    both = turn_schema(tools, say=True, call=True)
    assert len(both["anyOf"]) == 3
    assert turn_schema(tools, say=False, call=True)["anyOf"][0]["properties"]["call"] == {
        "const": "lookup_order"
    }
    assert turn_schema(tools, say=True, call=False)["properties"] == {"say": {"type": "string"}}
    assert decode_turn(say("hi"), tools).text == "hi"
    c = decode_turn(call("lookup_order", order_id="1"), tools)
    assert c.tool.name == "lookup_order" and c.args.order_id == "1"
    with pytest.raises(ValueError, match="arguments of lookup_order"):
        decode_turn(call("lookup_order", order="1"), tools)
    with pytest.raises(ValueError):
        decode_turn('{"call":"lookup_order","args":{"order_id":"1', tools)  # cut


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 100])
def test_the_words_of_a_reply_stream_out_with_escapes_decoded(chunk: int) -> None:
    words = 'He said "hi" \\ caf\u00e9 \U0001f600\nbye'
    raw = json.dumps({"say": words}, separators=(",", ":"))  # ensure_ascii: \\u escapes, a surrogate pair
    s, out = SayStream(), ""
    for k in range(0, len(raw), chunk):
        out += s.feed(raw[k : k + chunk])
    assert out == words and s.done
    s = SayStream()
    assert s.feed(call("x")) == ""


# --- turns on the scripted engine -----------------------------------------------------------
async def test_a_tool_call_runs_its_result_goes_back_and_the_model_answers() -> None:
    script = Script([call("lookup_order", order_id="4512"), "It ships Friday."])
    async with chains.Runtime(chain_of(script, [lookup_order])) as rt, rt.session() as sess:
        await sess.send(Text(text="Where is order 4512?"))
        sess.close_inputs()
        outs = await drain(sess)
    events = [o.value for o in outs if o.name == EVENTS]
    assert events == [
        ToolCall(id=events[0].id, name="lookup_order", args={"order_id": "4512"}),
        ToolResult(
            id=events[0].id,
            name="lookup_order",
            result={"status": "shipped", "arrives": "Friday"},
            elapsed_ms=events[1].elapsed_ms,
        ),
    ]
    assert reply_text(outs) == "It ships Friday."
    # the second round saw the call and its result; the tool is not offered again
    pending, schema = script.asked[1]
    assert [m["role"] for m in pending] == ["assistant", "tool"]
    assert pending[1]["content"] == "status: shipped, arrives: Friday"
    assert schema is None  # words only: plain text, JSON's brackets kept out
    assert script.structured[1] == {"regex": PLAIN_WORDS}
    assert script.asked[0][1] is not None and len(script.asked[0][1]["anyOf"]) == 2  # say or call
    chat = script.chats[0]
    assert chat.tool_calls == 1 and chat.tool_errors == 0


async def test_history_keeps_the_calls_their_results_and_the_words_said() -> None:
    script = Script([call("lookup_order", order_id="4512"), "Friday.", say("Bye.")])
    async with chains.Runtime(chain_of(script, [lookup_order])) as rt, rt.session() as sess:
        await sess.send(Text(text="Where is 4512?"))
        await wait_until(lambda: len(script.asked) == 2)
        await sess.send(Text(text="Thanks"))
        sess.close_inputs()
        await drain(sess)
        history = ChatSession(sess._state["chat"]).history
    assert [(m["role"], m["content"]) for m in history] == [
        ("user", "Where is 4512?"),
        ("assistant", call("lookup_order", order_id="4512")),
        ("tool", "status: shipped, arrives: Friday"),
        ("assistant", "Friday."),  # the words, not the JSON they came in
        ("user", "Thanks"),
        ("assistant", "Bye."),
    ]
    # the model reads its past replies in plain words
    assert script.chats[0].view(history[3]) == {"role": "assistant", "content": "Friday."}


async def test_required_means_a_call_first_and_the_last_round_only_speaks() -> None:
    def other(x: int) -> int:
        """Double it."""
        return 2 * x

    script = Script([call("other", x=2), call("lookup_order", order_id="1"), "Done."])
    agent = chain_of(script, [lookup_order, other], "required", rounds=2)
    async with chains.Runtime(agent) as rt, rt.session() as sess:
        await sess.send(Text(text="go"))
        sess.close_inputs()
        outs = await drain(sess)
    first, second, last = (schema for _, schema in script.asked)
    assert first is not None and all("call" in b["properties"] for b in first["anyOf"])  # no reply
    assert second is not None and [b["properties"].get("call") for b in second["anyOf"]] == [
        None,
        {"const": "lookup_order"},  # "other" was called: not offered again
    ]
    assert last is None  # the last round: words only, plain
    assert [o.value.name for o in outs if isinstance(o.value, ToolCall)] == ["other", "lookup_order"]
    assert reply_text(outs) == "Done."


async def test_a_raising_tool_is_an_error_event_and_the_session_goes_on() -> None:
    def broken(order_id: str) -> str:
        """Always fails."""
        raise RuntimeError("database down")

    script = Script([call("broken", order_id="1"), "Sorry, try later.", say("Hello.")])
    async with chains.Runtime(chain_of(script, [broken])) as rt, rt.session() as sess:
        await sess.send(Text(text="Where is 1?"))
        await wait_until(lambda: len(script.asked) == 2)
        await sess.send(Text(text="Hi"))
        sess.close_inputs()
        outs = await drain(sess)
    result = next(o.value for o in outs if isinstance(o.value, ToolResult))
    assert result.error == "RuntimeError: database down" and result.code == "tool_error"
    assert script.asked[1][0][1]["content"] == "error: RuntimeError: database down"  # the model is told
    assert reply_text(outs) == "Sorry, try later.Hello."
    assert script.chats[0].tool_errors == 1
    # on our protocol: a tool_result event and an error naming the tool
    mapper = OutputMapper(16000)
    msgs = mapper.map(EVENTS, result, 0.0, 0, 0.0)
    assert isinstance(msgs[0], Event) and msgs[0].event == "tool_result"
    assert msgs[1] == Error(code="tool_error", message="RuntimeError: database down", node="broken")
    call_msg = mapper.map(EVENTS, ToolCall(id="c", name="broken", args={"order_id": "1"}), 0.0, 0, 0.0)
    assert call_msg == [
        Event(event="tool_call", data={"id": "c", "name": "broken", "args": {"order_id": "1"}})
    ]


async def test_a_tool_past_its_timeout_is_cut_and_reported() -> None:
    release, finished = threading.Event(), []

    def slow(order_id: str) -> str:
        """Takes a while (a sync tool: its thread is abandoned at the timeout)."""
        release.wait(10)
        finished.append(order_id)
        return "late"

    script = Script([call("slow", order_id="1"), "Sorry."])
    agent = chain_of(script, [tool(slow, timeout_ms=20)])
    async with chains.Runtime(agent) as rt, rt.session() as sess:
        await sess.send(Text(text="?"))
        sess.close_inputs()
        outs = await drain(sess)
    result = next(o.value for o in outs if isinstance(o.value, ToolResult))
    assert result.code == "tool_timeout" and result.result is None
    assert reply_text(outs) == "Sorry."
    assert finished == []  # the answer did not wait for the thread
    release.set()
    await wait_until(lambda: finished == ["1"])


async def test_barge_in_cancels_a_running_tool_and_the_next_turn_is_served() -> None:
    started, cancelled = anyio.Event(), []

    async def slow_lookup(order_id: str) -> str:
        """Waits for ever."""
        started.set()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            cancelled.append(order_id)
            raise
        return "never"

    script = Script([call("slow_lookup", order_id="9"), say("Hi again.")])
    async with chains.Runtime(chain_of(script, [slow_lookup])) as rt, rt.session() as sess:
        await sess.send(Text(text="Where is 9?"))
        with anyio.fail_after(5):
            await started.wait()
        sess.interrupt()
        await wait_until(lambda: cancelled == ["9"])
        await sess.send(Text(text="Hello?"))
        sess.close_inputs()
        outs = await drain(sess)
        history = ChatSession(sess._state["chat"]).history
    assert reply_text(outs) == "Hi again."
    assert not any(isinstance(o.value, ToolResult) for o in outs)  # the cut call never answered
    chat = script.chats[0]
    assert chat.tools_cancelled == 1
    # the cut turn keeps its call, marked cancelled, in the history; the next turn follows it
    assert [m["role"] for m in history] == ["user", "assistant", "tool", "user", "assistant"]
    assert history[2]["content"] == "error: cancelled (the user spoke)"


async def test_a_cut_call_is_a_node_error_and_the_session_goes_on() -> None:
    script = Script(['{"call":"lookup_order","args":{"order_id":"45', say("Hello.")])
    async with chains.Runtime(chain_of(script, [lookup_order])) as rt, rt.session() as sess:
        await sess.send(Text(text="Where is 45?"))
        await wait_until(lambda: len(script.asked) == 1)
        await sess.send(Text(text="Hi"))
        sess.close_inputs()
        outs = await drain(sess)
    err = next(o.value for o in outs if o.name == ERROR)
    assert err.code == "reply_cut" and "tool call was cut" in err.message
    assert reply_text(outs) == "Hello."
