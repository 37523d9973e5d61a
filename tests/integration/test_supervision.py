"""A local replica whose model dies is a fault to survive: killing the vLLM engine
process under a running chain makes the next items fail as ``replica_lost`` (no hang,
no endless ``node_error``), the stage reads unhealthy while the replica is rebuilt,
and the chain serves again without a restart of the runtime."""

from __future__ import annotations

import os
import signal

import anyio
import psutil
import pytest

import chains
from chains import Text, TextDelta
from nodes import VLLMChat

pytestmark = [pytest.mark.models, pytest.mark.timeout(900)]


def _engine_processes() -> list[psutil.Process]:
    """vLLM's engine core runs in a child process of this one."""
    me = psutil.Process(os.getpid())
    return [p for p in me.children(recursive=True) if "python" in p.name().lower() or "VLLM" in p.name()]


async def _reply(rt: chains.Runtime, text: str) -> str:
    deltas = await rt.call(Text(text=text))
    return "".join(d.text for d in deltas if isinstance(d, TextDelta))


async def test_a_killed_engine_is_rebuilt_and_the_chain_serves_again() -> None:
    llm = VLLMChat(system="Answer in one short sentence.", max_tokens=16)

    @chains.chain
    def chat(text: Text):
        return llm(text)

    async with chains.running(chat) as rt:
        stage = rt.stages[0]
        stage.replicas.backoff_s = (0.5, 5.0)
        assert (await _reply(rt, "What is the capital of France?")).strip()
        victims = _engine_processes()
        assert victims, "no engine process found to kill"
        for p in victims:
            p.send_signal(signal.SIGKILL)

        codes: list[str] = []
        with anyio.fail_after(60):  # every item ends as an output or an error: no hang
            for _ in range(3):
                try:
                    await _reply(rt, "Hello?")
                except chains.NodeError as e:
                    codes.append(e.code)
        assert codes and codes[0] == "replica_lost", codes
        assert set(codes) <= {"replica_lost", "no_replica"}, codes

        with anyio.fail_after(300):  # a new engine starts (~25-60 s on two cores)
            while not (stage.replicas.rebuilds >= 1 and stage.replicas.ready):
                assert stage.metrics.healthy is False or stage.replicas.ready
                await anyio.sleep(0.5)
        assert stage.metrics.replica_rebuilds >= 1
        assert (await _reply(rt, "What is the capital of France?")).strip()
        assert stage.metrics.healthy
