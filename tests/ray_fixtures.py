"""Fake chains for the Ray tests and benchmark: no models, sleep-based cost.

Loaded by path inside each Ray actor (``FILE:CHAIN``), so it imports nothing from the
test package. The cluster the tests start gives its nodes custom resources
(``node_a``, ``node_b``, ``node_c``); the stages here ask for them, so where each
stage lands is known. In process and with ``--remote`` those options mean nothing.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

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
