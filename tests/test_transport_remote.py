"""Remote stages across two processes: `chains serve FILE --only NODE` hosts a node;
a runtime in this process reaches it over one websocket. Same outputs, errors and
interruptions as in-process; a slow remote stage slows the producer instead of
growing a buffer."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import socket
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from chains import ModelError, Text
from chains.context import NodeContext
from chains.messages import ErrorEvent
from runtime.engine import Runtime
from tests.transport_fixtures import (
    aget,
    node_server,
    raw_session,
    remote_known,
    remote_map,
    remote_shapes,
    slow_stream,
    spelling,
)
from transport.remote import hosting, links_of, with_remotes
from transport.server import serve

pytestmark = pytest.mark.anyio
FIXTURES = "tests/transport_fixtures.py"


async def outputs_by_name(chain: Any, *inputs: Any) -> dict[str, list[Any]]:
    got: dict[str, list[Any]] = defaultdict(list)
    async with Runtime(chain) as rt:
        async for o in rt.stream(*inputs):
            got[o.name].append(o.value)
    return dict(got)


CASES = [
    ("remote_map", "shout_word", "hello big world skip boom end"),  # map, with a None and an error
    ("remote_map", "join_words", "one two three"),  # stream node
    ("remote_map", "words_of", "a b c"),  # streaming map on the first stage
    ("remote_shapes", "lengths", "ab cd efg hijk"),  # batched map (batches form on the host)
    ("remote_shapes", "spell", "ab c#d ef"),  # streaming map that fails mid-stream
    ("remote_shapes", "running_total", "ab cd efg"),  # stream node fed by a batched stage
    ("remote_known", "KnownLengths", "ab =7 cde ~xy =12 f ~z"),  # known_result, batch_priority
]
CHAINS = {"remote_map": remote_map, "remote_shapes": remote_shapes, "remote_known": remote_known}


@pytest.mark.parametrize(("chain_name", "node", "doc"), CASES, ids=[c[1] for c in CASES])
async def test_a_remote_node_gives_the_same_outputs(chain_name: str, node: str, doc: str):
    chain = CHAINS[chain_name]
    local = await outputs_by_name(chain, Text(text=doc))
    with node_server(f"{FIXTURES}:{chain_name}", node) as url:
        remote = await outputs_by_name(with_remotes(chain, {node: url}), Text(text=doc))
    assert remote == local
    if node == "KnownLengths":  # known and ranked where the replicas run: the host's stage
        assert local == {"lengths": [2, 7, 3, 3, 12, 1, 2]}
    if node == "shout_word":
        assert local["error"] == [
            ErrorEvent(node="shout_word", code="node_error", message="ValueError: boom requested")
        ]
        assert Text(text="SKIP!") not in local["words"]


async def test_a_remote_streaming_call_is_cancelled_by_an_interrupt():
    with node_server(f"{FIXTURES}:spelling", "slow_spell", env={"CHAINS_TEST_SLOW_S": "0.05"}) as url:
        async with Runtime(with_remotes(spelling, {"slow_spell": url})) as rt:
            async with rt.session() as sess:
                await sess.send(Text(text="abcdefghijklmnop"))
                first = await sess.receive()
                assert first.value == Text(text="a")
                sess.interrupt()
                await sess.send(Text(text="xyz"))
                sess.close_inputs()
                rest = [o.value.text async for o in sess]
            del sess
            base = url.replace("ws://", "http://")
            with anyio.fail_after(10):
                while True:
                    gc.collect()  # the session is gone: its node state on the host goes too
                    _, _, body = await aget(base + "healthz")
                    health = json.loads(body)
                    stats = health["stats"]
                    if stats["cancelled"] >= 1 and stats["inflight"] == 0 and health["sessions"] == 0:
                        break
                    await anyio.sleep(0.05)
    assert rest[-3:] == ["x", "y", "z"]
    assert len(rest) <= 4  # at most a letter of the old turn was already on its way


async def test_a_slow_remote_stage_slows_the_producer():
    n = 400
    with node_server(f"{FIXTURES}:slow_stream", "slow_total", env={"CHAINS_TEST_SLOW_S": "0.004"}) as url:
        async with Runtime(with_remotes(slow_stream, {"slow_total": url})) as rt, rt.session() as sess:
            sent = received = 0
            gap = 0

            async def produce() -> None:
                nonlocal sent, gap
                for _ in range(n):
                    await sess.send(1)
                    sent += 1
                    gap = max(gap, sent - received)
                sess.close_inputs()

            async with anyio.create_task_group() as tg:
                tg.start_soon(produce)
                async for o in sess:
                    received += 1
                    assert o.value == received  # the running total, in order
            link = links_of(rt)["slow_total"]
            max_inbox = link.stats["max_inbox"]
        _, _, body = await aget(url.replace("ws://", "http://") + "healthz")
        host = json.loads(body)["stats"]
    assert received == n
    # Everything in flight fits in bounded places: the session's input edge (64), the
    # link's feed window (16, the host's backlog), the host's output window (32) and
    # the session's output edge (64). The producer waited instead of running ahead.
    assert gap <= 64 + 16 + 32 + 64 + 4, gap
    assert host["max_feed_backlog"] <= 16
    assert max_inbox <= 32


async def test_unreachable_or_mismatched_remote_fails_at_start():
    with pytest.raises(ModelError, match="cannot reach"):
        async with Runtime(with_remotes(remote_map, {"shout_word": "ws://127.0.0.1:9/"})):
            pass
    with (
        node_server(f"{FIXTURES}:remote_map", "join_words") as url,
        pytest.raises(ModelError, match=r"refused the link.*serves node 'join_words'"),
    ):
        async with Runtime(with_remotes(remote_map, {"shout_word": url})):
            pass


async def test_a_remote_that_goes_away_fails_items_not_the_session():
    cm = node_server(f"{FIXTURES}:spelling", "slow_spell", env={"CHAINS_TEST_SLOW_S": "0.001"})
    url = cm.__enter__()
    try:
        async with Runtime(with_remotes(spelling, {"slow_spell": url})) as rt, rt.session() as sess:
            await sess.send(Text(text="ab"))
            assert [(await sess.receive()).value.text for _ in range(2)] == ["a", "b"]
            cm.__exit__(None, None, None)  # the node's process goes away
            rs = rt.stages[0].replicas
            with anyio.fail_after(10):  # the dropped link takes its replica out, no call needed
                while rs.ready:
                    await anyio.sleep(0.01)
            await sess.send(Text(text="cd"))
            err = await sess.receive()
            assert err.name == "error"
            # While the replica is rebuilt (it cannot be: the host is gone) every item
            # fails at once with an explicit code; the session goes on.
            assert err.value.node == "slow_spell" and err.value.code == "no_replica"
            await sess.send(Text(text="ef"))
            assert (await sess.receive()).value.code == "no_replica"
            sess.close_inputs()
            assert [o async for o in sess] == []
            assert rt.stages[0].replicas.counts()["ready"] == 0
    finally:
        cm.__exit__(None, None, None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _host_on(port: int) -> Iterator[subprocess.Popen[bytes]]:
    """``chains serve ... --only slow_spell --port PORT`` (a fixed port: restarted in place)."""
    cmd = ["chains", "serve", f"{FIXTURES}:spelling", "--only", "slow_spell", "--port", str(port)]
    proc = subprocess.Popen(
        [sys.executable, "-m", *cmd],
        env={**os.environ, "CHAINS_TEST_SLOW_S": "0.001"},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None and b"ws://" in proc.stdout.readline()
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def test_a_lost_remote_replica_is_relinked_when_its_host_is_back():
    """The host restarts on the same port: the replica set rebuilds the link with backoff
    and the same session is served again, without restarting the runtime."""
    port = _free_port()
    url = f"ws://127.0.0.1:{port}/"
    first = _host_on(port)
    first.__enter__()
    try:
        async with Runtime(with_remotes(spelling, {"slow_spell": url})) as rt, rt.session() as sess:
            await sess.send(Text(text="ab"))
            assert [(await sess.receive()).value.text for _ in range(2)] == ["a", "b"]
            first.__exit__(None, None, None)
            await sess.send(Text(text="c"))
            assert (await sess.receive()).name == "error"
            rs = rt.stages[0].replicas
            with _host_on(port):
                with anyio.fail_after(30):
                    while not rs.ready:
                        await anyio.sleep(0.05)
                await sess.send(Text(text="xy"))
                assert [(await sess.receive()).value.text for _ in range(2)] == ["x", "y"]
                assert rs.rebuilds >= 1
                sess.close_inputs()
                assert [o async for o in sess] == []
    finally:
        first.__exit__(None, None, None)


async def test_the_server_serves_a_chain_with_a_remote_node():
    with node_server(f"{FIXTURES}:remote_map", "shout_word") as url:
        async with serve(remote_map, port=0, remotes={"shout_word": url}) as srv:
            got = await raw_session(
                srv.url, {"type": "start", "sample_rate": 16000}, {"type": "input", "data": "hi there"}
            )
    texts = [m["text"] for m in got if isinstance(m, dict) and m.get("type") == "text"]
    assert texts == ["HI!", "THERE!", "HI! THERE!"]


async def test_an_items_remaining_budget_travels_to_the_remote_stage():
    """In the replica call's Request, not in the node context (which has no deadline)."""
    assert not hasattr(NodeContext("s", "n", {}, lambda: 0), "deadline")
    with node_server(f"{FIXTURES}:remote_map", "shout_word") as url:
        await outputs_by_name(with_remotes(remote_map, {"shout_word": url}), Text(text="a b c"))
        _, _, body = await aget(url.replace("ws://", "http://") + "healthz")
    assert json.loads(body)["stats"]["budgeted_calls"] == 3


async def test_the_hosts_metrics_need_the_token_and_healthz_does_not():
    async with hosting(remote_map, "shout_word", token="s3cret") as (_, url):
        base = url.replace("ws://", "http://")
        status, _, _ = await aget(base + "metrics")
        assert status == 401
        status, _, body = await aget(base + "metrics", {"Authorization": "Bearer s3cret"})
        assert status == 200 and b"chains_" in body
        status, _, body = await aget(base + "healthz")
        health = json.loads(body)
        assert status == 200 and health["status"] == "ok" and health["replicas"]["ready"] == 1
