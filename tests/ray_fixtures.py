"""Fake chains for the Ray tests and benchmark: no models, sleep-based cost.

Loaded by path inside each Ray actor (``FILE:CHAIN``), so it imports nothing from the
test package. The cluster the tests start gives its nodes custom resources
(``node_a``, ``node_b``, ``node_c``); the stages here ask for them, so where each
stage lands is known. In process and with ``--remote`` those options mean nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import msgspec

import chains
from chains import Batch, Stream, Text

SLOW_S = float(os.environ.get("CHAINS_TEST_RAY_SLOW_S", "0.005"))


class Tagged(msgspec.Struct, frozen=True):
    word: str
    length: int


# --- a 3-stage pipeline with a batched stage ----------------------------------------------------
@chains.node(resources={"node_a": 0.01})
async def split_words(doc: Text) -> AsyncIterator[Text]:
    for w in doc.text.split():
        yield Text(text=w)


@chains.node(batch=Batch(max_size=8, max_wait_ms=2), resources={"node_b": 0.01})
async def measure(ws: list[Text]) -> list[Tagged]:
    await asyncio.sleep(SLOW_S)  # one batch costs the same whatever its size
    return [Tagged(w.text, len(w.text)) for w in ws]


@chains.node(resources={"node_c": 0.01})
async def label(t: Tagged) -> Text | None:
    if t.word == "skip":
        return None
    if t.word == "boom":
        raise ValueError("boom requested")
    return Text(text=f"{t.word.upper()}:{t.length}")


@chains.chain
def pipeline(doc: Text):
    return label(measure(split_words(doc)))


# --- live sessions over a replicated stage (kill tests) --------------------------------------------
@chains.node(replicas=2, router="sticky", resources={"worker": 0.01})
async def slow_inc(x: int) -> int:
    await asyncio.sleep(SLOW_S)
    return x + 1


@chains.chain
def live(xs: Stream[int]):
    return slow_inc(xs)


# --- the benchmark's stages (one long session per client: a frame per item) ----------------------
@chains.node
async def hop(x: int) -> int:
    return x


@chains.chain
def hop_chain(xs: Stream[int]):
    return hop(xs)


@chains.node(batch=Batch(max_size=16, max_wait_ms=5))
async def batched(xs: list[int]) -> list[int]:
    await asyncio.sleep(float(os.environ.get("CHAINS_TEST_RAY_BATCH_S", "0.05")))
    return [x + 1 for x in xs]


@chains.chain
def batched_chain(xs: Stream[int]):
    return batched(xs)


# --- the replica contract's cases (tests/test_replica_contract.py) --------------------------------
@chains.node(name="c_map", timeout_ms=300)
async def c_map(x: str) -> str:
    if x == "bad":
        raise ValueError("bad input")
    if x == "slow":
        await asyncio.sleep(5)
    return x.upper()


@chains.node(name="c_smap")
async def c_smap(x: str) -> AsyncIterator[str]:
    if x == "bad":
        raise ValueError("bad input")
    for ch in x:
        yield ch
        await asyncio.sleep(0.005)


@chains.node(name="c_batch", batch=Batch(max_size=4, max_wait_ms=1))
async def c_batch(xs: list[str]) -> list[str]:
    if "bad" in xs:
        raise ValueError("bad input")
    return [x.upper() for x in xs]


@chains.node(name="c_stream", placement="ray")  # a stream node goes to Ray only when asked
async def c_stream(xs: Stream[str]) -> AsyncIterator[str]:
    async for x in xs:
        if x == "bad":
            raise ValueError("bad input")
        yield x.upper()


@chains.node(name="c_fragile", replicas=2)
class Fragile:
    """A model that dies on "die" (its ``alive()`` turns False): its replica is lost."""

    def __init__(self) -> None:
        self.dead = False

    def alive(self) -> bool:
        return not self.dead

    async def __call__(self, x: str) -> str:
        if x == "die":
            self.dead = True
            raise RuntimeError("the engine died")
        return x


@chains.chain
def contract_map(x: str):
    return c_map(x)


@chains.chain
def contract_smap(x: str):
    return c_smap(x)


@chains.chain
def contract_batch(x: str):
    return c_batch(x)


@chains.chain
def contract_stream(xs: Stream[str]):
    return c_stream(xs)


@chains.chain
def contract_fragile(x: str):
    return Fragile()(x)


# --- prefix routing and autoscaling where the replicas run ------------------------------------------
class FakeEngineLLM:
    """An LLM-like class node: its prompt's tokens are a pure function of the item
    (``route_tokens`` is a staticmethod), and it reports the prompt tokens its "engine"
    served from cache (the leading 16-token blocks it saw before) as vLLM does."""

    def __init__(self) -> None:
        self.seen: set[tuple[int, ...]] = set()

    @staticmethod
    def route_tokens(prompt: str) -> list[int]:
        return [ord(c) for c in prompt]

    async def __call__(self, prompt: str) -> AsyncIterator[str]:
        tokens = self.route_tokens(prompt)
        cached = 0
        for end in range(16, len(tokens), 16):  # the last token is always recomputed
            if tuple(tokens[:end]) in self.seen:
                cached = end
        for end in range(16, len(tokens) + 1, 16):
            self.seen.add(tuple(tokens[:end]))
        chains.context().cached_tokens = cached
        yield prompt[-1]


llm_prefix = chains.node(name="llm_prefix", replicas=2, router="prefix")(FakeEngineLLM)


@chains.chain
def prefix_chain(prompt: str):
    return llm_prefix()(prompt)


@chains.node(name="scaled", min_replicas=1, max_replicas=2, concurrency=1, budget_ms=300)
async def scaled(x: int) -> int:
    await asyncio.sleep(0.05)
    return x


@chains.chain
def scaled_chain(x: int):
    return scaled(x)


@contextlib.contextmanager
def local_cluster() -> Iterator[Any]:
    """A 3-node Ray cluster on this machine (1 CPU each; custom resources ``node_a`` on
    the head, ``node_b``/``node_c`` and ``worker`` on the others), joined by this process."""
    import ray
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"node_a": 1}})
    c.add_node(num_cpus=1, resources={"node_b": 1, "worker": 1})
    c.add_node(num_cpus=1, resources={"node_c": 1, "worker": 1})
    c.wait_for_nodes()
    ray.init(address=c.address, namespace="chains", log_to_driver=False)
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()
