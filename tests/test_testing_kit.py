"""chains.testing, the public test kit: a user's own test suite gets the fakes with
scripted timing, the leak check, and the pytest plugin that runs both."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import pytest

import chains
from chains.testing import BatchFake, Gate, LeakCheck, LeakError, MapFake, drain, wait_until

ROOT = Path(__file__).resolve().parents[1]


def test_importing_the_kit_does_not_import_the_runtime() -> None:
    code = (
        "import sys, chains.testing, chains.testing.leaks; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('runtime', 'transport', 'nodes')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stdout + p.stderr


async def test_leak_check_names_a_leaked_task_and_cancels_it() -> None:
    check = LeakCheck()
    orphan = asyncio.get_running_loop().create_task(asyncio.sleep(30), name="orphan")
    with pytest.raises(LeakError, match=r"leaked task: orphan"):
        await check.check()
    assert orphan.cancelled()  # cleaned up, so the next test starts clean


async def test_leak_check_passes_when_a_session_cleaned_up() -> None:
    check = LeakCheck()
    gate = Gate()
    slow = MapFake("slow", gate=gate)

    @chains.chain
    def one(x: str):
        return slow.node(x)

    async with chains.Runtime(one) as rt, rt.session() as sess:
        await sess.send("a")
        await wait_until(lambda: gate.waiting == 1)
        gate.open()
        sess.close_inputs()
        outs = await drain(sess)
    assert [o.value for o in outs] == ["A"]
    await check.check()


def test_a_users_suite_with_the_plugin(tmp_path: Path) -> None:
    """A project outside this repository: its conftest loads the plugin, its tests use
    the fakes; the clean tests pass and the leaky one fails naming its task."""
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["chains.testing.pytest_plugin"]\n')
    (tmp_path / "test_mine.py").write_text(
        textwrap.dedent(
            """
            import asyncio

            import chains
            from chains.testing import BatchFake, MapFake, drain


            async def test_batches_mix_sessions():
                model = BatchFake("model", max_size=8, max_wait_ms=20)
                up = MapFake("up")

                @chains.chain
                def pipeline(x: str):
                    return up.node(model.node(x))

                async with chains.Runtime(pipeline) as rt:
                    async def one(tag):
                        async with rt.session() as s:
                            await s.send(f"{tag}/x")
                            s.close_inputs()
                            return [o.value for o in await drain(s)]

                    got = await asyncio.gather(*(one(f"s{i}") for i in range(4)))
                assert sorted(v for outs in got for v in outs) == [f"S{i}/X" for i in range(4)]
                assert max(model.sessions_per_batch()) > 1  # one batch served several sessions


            async def test_leaky():
                asyncio.get_running_loop().create_task(asyncio.sleep(30), name="forgotten")
            """
        )
    )
    p = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = p.stdout + p.stderr
    assert "PASSED test_mine.py::test_batches_mix_sessions" in out, out
    assert "ERROR test_mine.py::test_leaky" in out and "leaked task: forgotten" in out, out


async def test_batch_fake_scripts_cost_per_batch() -> None:
    model = BatchFake("m", a=0.001, k=0.0, max_size=4, max_wait_ms=50)

    @chains.chain
    def c(x: str):
        return model.node(x)

    async with chains.Runtime(c) as rt, rt.session() as s:
        for i in range(4):
            await s.send(f"s/{i}")
        s.close_inputs()
        with anyio.fail_after(10):
            outs = await drain(s)
    assert sorted(o.value for o in outs) == [f"S/{i}" for i in range(4)]
    assert sum(model.sizes) == 4 and model.flight.max == 1
