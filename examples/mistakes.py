"""Task 4, the usual mistakes and the errors they get: each points at the mistake (the
node, the types, the file and line) and says what to do instead.

    python examples/mistakes.py

Each case below makes one mistake on purpose and prints the error it raises.
"""

from __future__ import annotations

import anyio

import chains
from chains import Text


@chains.node
async def shout(t: Text) -> Text:
    return Text(text=t.text.upper())


@chains.node
async def length(t: Text) -> int:
    return len(t.text)


@chains.node
class Model:
    def __init__(self, size: int = 1) -> None:
        self.size = size

    async def __call__(self, t: Text) -> Text:
        return t


def value_logic_in_the_chain_body() -> None:
    @chains.chain
    def c(t: Text):
        return shout(t).text + "!"  # a node's output has no value while the chain is defined


def branching_on_an_output() -> None:
    @chains.chain
    def c(t: Text):
        out = shout(t)
        return out if out else t


def a_wrong_return_type() -> None:
    @chains.node
    async def exclaim(t: Text) -> Text:
        return t.text + "!"  # a str, but annotated Text

    @chains.chain
    def c(t: Text):
        return shout(exclaim(t))

    chains.call_sync(c, Text(text="hi"))


def returning_a_value_from_the_chain() -> None:
    @chains.chain
    def c(t: Text):
        shout(t)
        return "done"


def wiring_mismatched_types() -> None:
    @chains.node
    async def double(n: int) -> int:
        return 2 * n

    @chains.chain
    def c(t: Text):
        return double(shout(t))


def a_class_node_not_created() -> None:
    @chains.chain
    def c(t: Text):
        return Model(t)  # Model()(t) is meant


def the_wrong_input() -> None:
    @chains.chain
    def c(t: Text):
        return length(t)

    chains.call_sync(c, "a plain str")


def call_sync_inside_async_code() -> None:
    @chains.chain
    def c(t: Text):
        return shout(t)

    async def handler() -> None:
        chains.call_sync(c, Text(text="x"))  # await chains.call(c, ...) is meant

    anyio.run(handler)


def a_client_with_no_server() -> None:
    async def go() -> None:
        async with chains.Client("ws://127.0.0.1:9", open_timeout=2):
            pass

    anyio.run(go)


CASES = [
    value_logic_in_the_chain_body,
    branching_on_an_output,
    a_wrong_return_type,
    returning_a_value_from_the_chain,
    wiring_mismatched_types,
    a_class_node_not_created,
    the_wrong_input,
    call_sync_inside_async_code,
    a_client_with_no_server,
]

if __name__ == "__main__":
    for case in CASES:
        try:
            case()
        except Exception as e:  # each case raises: show which error, and what it says
            print(f"{case.__name__.replace('_', ' ')}:\n  {type(e).__name__}: {e}\n")
        else:
            raise SystemExit(f"{case.__name__} raised nothing")
