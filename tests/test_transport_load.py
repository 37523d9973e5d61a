"""200 concurrent real sessions over loopback: every one is served, and afterwards
no task is left (the conftest's leak check) and memory is back near its baseline."""

from __future__ import annotations

import gc
import tracemalloc

import anyio
import pytest

from chains import AudioFrame
from tests.transport_fixtures import FAKE, RATE, frames, speech_pcm, voice
from transport.client import Client
from transport.protocol import Done, Transcript
from transport.server import Limits, serve

pytestmark = pytest.mark.anyio

SESSIONS = 200


async def one_session(url: str, results: list[tuple[str, int, bool]]) -> None:
    async with Client(url, sample_rate=RATE, open_timeout=60) as c:
        for f in frames(speech_pcm()):
            await c.send_audio(f)
        await c.end()
        transcript, audio, done = "", 0, False
        async for m in c:
            if isinstance(m, Transcript):
                transcript = m.text
            elif isinstance(m, AudioFrame):
                audio += len(m.pcm)
            elif isinstance(m, Done):
                done = True
        results.append((transcript, audio, done))


async def wave_of(url: str, n: int) -> list[tuple[str, int, bool]]:
    results: list[tuple[str, int, bool]] = []
    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(one_session, url, results)
    return results


def live_blocks() -> int:
    """Allocations alive now (tracemalloc's own bookkeeping left out)."""
    snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
    return sum(st.count for st in snap.statistics("filename"))


async def test_200_concurrent_sessions_leave_nothing_behind():
    FAKE.reset()
    limits = Limits(max_sessions=SESSIONS + 10, start_timeout_s=60.0)
    async with serve(voice, port=0, limits=limits) as srv:
        rt = srv.runtimes["voice"]
        # Warm-up: codecs, caches, lazily created things. A full wave: soxr's stream
        # resamplers (one per session) fill numpy/soxr internals that settle only after a
        # few hundred streams, and would read as growth between the measured waves.
        await wave_of(srv.url, SESSIONS)
        gc.collect()
        tracemalloc.start()
        retained: list[int] = []
        blocks: list[int] = []
        try:
            for _ in range(3):
                with anyio.fail_after(120):
                    results = await wave_of(srv.url, SESSIONS)
                with anyio.fail_after(10):
                    while srv.connections:
                        await anyio.sleep(0.01)
                assert len(results) == SESSIONS
                assert all(r == ("heard 400 ms", 5 * 320 * 2, True) for r in results), results[:3]
                assert rt.sessions == {} and rt.metrics.sessions_active == 0
                for _ in range(3):  # closed sockets are released a few loop iterations later
                    await anyio.sleep(0.05)
                    gc.collect()
                retained.append(tracemalloc.get_traced_memory()[0])
                blocks.append(live_blocks())
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert srv.stats["done"] == 4 * SESSIONS
        # 200 live sessions hold megabytes at their peak; once they close, what stays is
        # small: tables sized by the peak (asyncio's task registry grows its hash table,
        # which is bytes but not blocks) ...
        assert peak > 2_000_000
        assert retained[0] < peak // 20, (retained, peak)
        # ... and a further wave of 200 leaves no more live allocations than the one before:
        # anything kept per session (a session, a connection, a task: dozens of blocks
        # each) would show as at least 200 more after every wave. One-off growth (a set's
        # table resized, a date cache, an allocator's arena) shows after one wave only, so
        # of two successive waves, the smaller growth is the one that tells.
        growth = min(blocks[1] - blocks[0], blocks[2] - blocks[1])
        assert growth < 150, (blocks, retained)
