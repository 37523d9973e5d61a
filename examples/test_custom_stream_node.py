"""Tests of the custom stream node, written with ``chains.testing``: the pytest plugin
(examples/conftest.py) runs async tests on anyio and fails a test that leaves work
running; ``drain`` reads a session to its end."""

from __future__ import annotations

from custom_stream_node import dedupe, unique_lines

import chains
from chains import Stream, Text
from chains.testing import drain


def lines(*xs: str) -> list[Text]:
    return [Text(text=x) for x in xs]


async def test_each_line_once_numbered():
    out = await chains.call(unique_lines, lines("a", " A ", "b", "a"))
    assert out == lines("1. A", "2. B")


async def test_state_is_per_session():
    async with chains.Runtime(unique_lines) as rt, rt.session() as s1, rt.session() as s2:
        for x in ("x", "y"):
            await s1.send(Text(text=x))
        await s2.send(Text(text="y"))
        s1.close_inputs()
        s2.close_inputs()
        got1 = [o.value.text for o in await drain(s1)]
        got2 = [o.value.text for o in await drain(s2)]
    assert got1 == ["1. X", "2. Y"]
    assert got2 == ["1. Y"]  # the other session's "y" is not this one's


async def test_the_node_alone_is_a_plain_async_generator():
    async def feed() -> Stream[Text]:
        for t in lines("q", "q", "r"):
            yield t

    got = [t.text async for t in dedupe(feed())]
    assert got == ["1. q", "2. r"]
