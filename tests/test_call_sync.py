"""``chains.call_sync``: a chain called from synchronous code shares one runtime
across calls (its model loads once), raises what ``chains.call`` raises, and refuses
to block a running event loop."""

from __future__ import annotations

import threading

import pytest

import chains
from chains import Text
from chains.sync import shutdown


class Loads:
    count = 0


@chains.node
class Upper:
    def __init__(self) -> None:
        Loads.count += 1  # one load per replica: per runtime

    def __call__(self, t: Text) -> Text:
        if t.text == "boom":
            raise ValueError("no boom")
        return Text(text=t.text.upper())


@chains.chain
def upper(t: Text):
    return Upper()(t)


def test_call_sync_shares_one_runtime_and_raises_node_errors():
    Loads.count = 0
    try:
        assert chains.call_sync(upper, Text(text="a")) == Text(text="A")
        assert chains.call_sync(upper, Text(text="b")) == Text(text="B")
        results: list[Text] = []
        threads = [
            threading.Thread(target=lambda: results.append(chains.call_sync(upper, Text(text="c"))))
            for _ in range(3)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == [Text(text="C")] * 3
        assert Loads.count == 1  # the model loaded once for every call
        with pytest.raises(chains.NodeError, match="node 'Upper' failed: ValueError: no boom"):
            chains.call_sync(upper, Text(text="boom"))
    finally:
        shutdown()
    assert not any(t.name == "chains:call_sync" for t in threading.enumerate())


async def test_call_sync_in_a_running_loop_says_to_await_chains_call():
    with pytest.raises(chains.ChainsError, match=r"use `await chains\.call"):
        chains.call_sync(upper, Text(text="a"))
