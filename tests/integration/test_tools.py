"""Tools on the real model (SmolLM2-135M on vLLM): a turn that asks for something only a
tool knows is answered from the tool's result; a tool that raises is an error event
and the session goes on; a barge-in while a slow tool runs cancels it; the agent demo
answers its sample order call from the order table.

One runtime for the module (one engine), hosted on the module's event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest

import chains
from chains import AudioFrame, Text, TextDelta, ToolCall, ToolResult
from chains.outputs import EVENTS
from nodes import VLLMChat
from nodes.tools import tool
from tests.integration.hosting import hosted_runtime

from .conftest import ROOT, read_wav

pytestmark = pytest.mark.timeout(900)

ORDERS = {"4512": {"status": "shipped", "arrives": "Friday"}}
STARTED = asyncio.Event()
CANCELLED: list[str] = []


def lookup_order(order_id: str) -> dict[str, str]:
    """Look up an order's status and delivery day.

    Args:
        order_id: the order number, digits only
    """
    return ORDERS.get("".join(c for c in order_id if c.isdigit()), {"status": "not found"})


def check_stock(item: str) -> str:
    """Check whether an item is in stock.

    Args:
        item: the item's name
    """
    raise ConnectionError("the stock database is down")


async def find_parcel(order_id: str) -> str:
    """Find where an order's parcel is now.

    Args:
        order_id: the order number, digits only
    """
    STARTED.set()
    try:
        await anyio.sleep(120)
    except anyio.get_cancelled_exc_class():
        CANCELLED.append(order_id)
        raise
    return "in the van"


SYSTEM = "You are the phone assistant of a small shop. Answer in one short sentence."


def chat_chain(tools: list[Any]) -> chains.Chain:
    template = VLLMChat(system=SYSTEM, tools=tools, tool_choice="required", max_tool_rounds=1)

    @chains.chain
    def agent(t: Text):
        return {"reply": template(t)}

    return agent


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


@pytest.fixture(scope="module", autouse=True)
def engine(loop) -> Iterator[None]:
    """One engine for the module: held here, every chat below attaches to it (same options)."""
    holder = VLLMChat().instantiate()
    loop.run_until_complete(holder.setup())
    yield
    loop.run_until_complete(holder.close())


async def turn(sess: Any, text: str) -> list[chains.Output]:
    """Send one line and read the outputs up to its reply's final delta."""
    await sess.send(Text(text=text))
    outs: list[chains.Output] = []
    with anyio.fail_after(300):
        async for o in sess:
            outs.append(o)
            if o.name == "reply" and isinstance(o.value, TextDelta) and o.value.final:
                break
            if o.name == "error" and getattr(o.value, "code", "") == "reply_cut":
                break
    return outs


def reply_of(outs: list[chains.Output]) -> str:
    return "".join(o.value.text for o in outs if o.name == "reply" and isinstance(o.value, TextDelta))


def test_a_question_only_a_tool_can_answer_is_answered_from_its_result(loop) -> None:
    async def run(rt: Any) -> list[chains.Output]:
        async with rt.session() as sess:
            return await turn(sess, "Hi, where is my order 4512?")

    with hosted_runtime(loop, chat_chain([lookup_order])) as rt:
        outs = loop.run_until_complete(run(rt))
    events = [o.value for o in outs if o.name == EVENTS]
    calls = [e for e in events if isinstance(e, ToolCall)]
    results = [e for e in events if isinstance(e, ToolResult)]
    assert [(c.name, c.args) for c in calls] == [("lookup_order", {"order_id": "4512"})]
    assert results[0].result == {"status": "shipped", "arrives": "Friday"}
    reply = reply_of(outs).lower()
    assert "shipped" in reply or "friday" in reply, reply  # only the tool knew


def test_a_raising_tool_is_an_error_event_and_the_session_goes_on(loop) -> None:
    async def run(rt: Any) -> tuple[list[chains.Output], list[chains.Output]]:
        async with rt.session() as sess:
            first = await turn(sess, "Do you have blue umbrellas in stock?")
            second = await turn(sess, "Thanks, and is the shop open today?")
            return first, second

    with hosted_runtime(loop, chat_chain([check_stock])) as rt:
        first, second = loop.run_until_complete(run(rt))
    result = next(o.value for o in first if isinstance(o.value, ToolResult))
    assert result.code == "tool_error" and "stock database is down" in (result.error or "")
    for outs in (first, second):  # the turn ended with the model's reply, and the session went on
        assert outs[-1].name == "reply" and outs[-1].value.final, outs[-3:]
        assert not [o for o in outs if o.name == "error"]


def test_barge_in_during_a_slow_tool_cancels_it(loop) -> None:
    async def run(rt: Any) -> tuple[list[str], list[chains.Output]]:
        async with rt.session() as sess:
            await sess.send(Text(text="Where is the parcel of order 4512 right now?"))
            with anyio.fail_after(300):
                await STARTED.wait()
            sess.interrupt()
            with anyio.fail_after(30):
                while not CANCELLED:
                    await anyio.sleep(0.01)
            cut = list(CANCELLED)
            return cut, await turn(sess, "Never mind. Hello!")

    with hosted_runtime(loop, chat_chain([tool(find_parcel, timeout_ms=5000)])) as rt:
        cut, outs = loop.run_until_complete(run(rt))
    assert len(cut) == 1  # the call running at the barge-in was cancelled then
    assert outs[-1].name == "reply" and outs[-1].value.final  # the next turn was served


def test_the_agent_demo_answers_its_order_call_from_the_table(loop) -> None:
    from chains.loader import load_chain

    agent = load_chain(str(ROOT / "demos" / "agent.py"))
    pcm, rate = read_wav(ROOT / "demos" / "assets" / "agent" / "order.wav")
    silence = bytes(2 * rate)  # 1 s: the VAD needs silence after the turn

    async def go(rt: Any) -> list[chains.Output]:
        async def audio() -> AsyncIterator[AudioFrame]:
            data = pcm + silence
            step = 2 * rate // 50  # 20 ms frames
            for i in range(0, len(data), step):
                yield AudioFrame(pcm=data[i : i + step], sample_rate=rate)

        return [o async for o in rt.stream(audio())]

    with hosted_runtime(loop, agent) as rt:
        outs = loop.run_until_complete(go(rt))
    calls = [o.value for o in outs if isinstance(o.value, ToolCall)]
    assert calls and calls[0].name == "lookup_order", calls
    reply = reply_of(outs).lower()
    assert "shipped" in reply or "friday" in reply, (calls, reply)
    assert [o for o in outs if o.name == "audio"]  # spoken
