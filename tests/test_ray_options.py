"""The Ray backend's mapping from node options to actors, and which nodes go to the
cluster: pure functions, no cluster started (the cluster tests are in test_ray.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

pytest.importorskip("ray")

import chains
from chains import Stream, Text
from chains.errors import ChainError
from runtime.placement import Placed
from tests.ray_fixtures import pipeline
from transport.remote.ray import RayProvider, actor_options, chain_target, on_ray, with_ray


@chains.node(device="cuda", gpu=0.25, cpu=2, resources={"accel": 1}, max_restarts=3)
async def gpu_node(t: Text) -> Text:
    return t


@chains.node(device="cuda")
async def whole_gpu(t: Text) -> Text:
    return t


@chains.node
async def vad_like(frames: Stream[Text]) -> AsyncIterator[Text]:
    async for f in frames:
        yield f


@chains.node(placement="local")
async def stays(t: Text) -> Text:
    return t


@chains.chain
def mixed(frames: Stream[Text]):
    return stays(gpu_node(vad_like(frames)))


@chains.chain
def only_local(frames: Stream[Text]):
    return vad_like(frames)


def test_node_options_become_actor_options():
    o = actor_options(gpu_node.spec, replicas=1)
    assert (o["num_cpus"], o["num_gpus"], o["resources"], o["max_restarts"]) == (2, 0.25, {"accel": 1}, 3)
    assert o["runtime_env"]["env_vars"]["CHAINS_GPU_SHARE"] == "0.25"
    assert "scheduling_strategy" not in o
    whole = actor_options(whole_gpu.spec, replicas=3)
    assert whole["num_gpus"] == 1.0 and whole["num_cpus"] == 0
    assert whole["max_restarts"] == -1  # the default: unlimited, Ray's -1
    assert whole["scheduling_strategy"] == "SPREAD"  # replicas of one stage on different nodes


def test_shared_stages_go_to_ray_and_session_stream_nodes_stay():
    assert on_ray(gpu_node.spec) and not on_ray(vad_like.spec) and not on_ray(stays.spec)
    rc = with_ray(mixed)
    assert isinstance(rc, Placed) and rc.chain is mixed and rc.graph is mixed.graph  # no rewritten graph
    assert set(rc.placement.providers) == {"gpu_node"}
    node = mixed.graph.node("gpu_node")
    provider = rc.placement.provider(node)
    assert isinstance(provider, RayProvider) and not provider.local
    assert provider.spec is node.spec  # the node's real spec: router, autoscaling, budget
    assert provider.target == chain_target(mixed) and provider.target.endswith("test_ray_options.py:mixed")


def test_a_chain_with_nothing_for_ray_is_refused():
    with pytest.raises(ChainError, match="no node goes to Ray"):
        with_ray(only_local)


def test_replicas_follow_the_node_options():
    rc = with_ray(pipeline)
    assert [n.spec.options.replicas for n in rc.graph.nodes] == [1, 1, 1]
