"""nodes.spin: vLLM's shared-memory queue readers are told to spin 20 ms after each
read (their default is a 1 s ``sched_yield`` loop) by a vLLM general plugin that
the package declares, ``CHAINS_VLLM_SPIN_MS`` sets the spin (a bad value is an error
naming it), and an unknown vLLM is left alone. Checked on a stand-in module; the
last test asks the installed vLLM's own plugin loader."""

from __future__ import annotations

import subprocess
import sys
import types
from importlib.metadata import entry_points

import pytest

from nodes import spin

MODULE = "vllm.distributed.device_communicators.shm_broadcast"


def fake_vllm(monkeypatch: pytest.MonkeyPatch, init) -> type:
    cls = type("SpinCondition", (), {"__init__": init})
    mod = types.ModuleType(MODULE)
    mod.SpinCondition = cls  # type: ignore[attr-defined]
    parts = MODULE.split(".")
    for i in range(1, len(parts)):
        monkeypatch.setitem(sys.modules, ".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
    monkeypatch.setitem(sys.modules, MODULE, mod)
    for i in range(1, len(parts)):
        setattr(sys.modules[".".join(parts[:i])], parts[i], sys.modules[".".join(parts[: i + 1])])
    return cls


def test_the_readers_default_busy_loop_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    def init(self, is_reader, context, notify_address, busy_loop_s: float = 1):
        self.busy_loop_s = busy_loop_s

    cls = fake_vllm(monkeypatch, init)
    assert spin.quiet_vllm(0.0)
    assert cls(True, None, "ipc://x").busy_loop_s == 0.0
    assert cls(True, None, "ipc://x", 2).busy_loop_s == 2  # an explicit value still wins


def test_another_signature_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    def init(self, is_reader, context, notify_address, spin_s: float = 1):
        self.spin_s = spin_s

    cls = fake_vllm(monkeypatch, init)
    assert not spin.quiet_vllm(0.0)
    assert cls(True, None, "ipc://x").spin_s == 1


def test_the_plugin_sets_the_spin_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    def init(self, is_reader, context, notify_address, busy_loop_s: float = 1):
        self.busy_loop_s = busy_loop_s

    cls = fake_vllm(monkeypatch, init)
    monkeypatch.delenv(spin.SPIN_ENV, raising=False)
    spin.vllm_plugin()
    assert cls(True, None, "ipc://x").busy_loop_s == spin.SPIN_MS / 1000 == 0.02
    monkeypatch.setenv(spin.SPIN_ENV, "1000")  # vLLM's own behaviour, asked for
    spin.vllm_plugin()
    assert cls(True, None, "ipc://x").busy_loop_s == 1.0


@pytest.mark.parametrize("raw", ["abc", "-5", "nan"])
def test_a_bad_spin_is_an_error_naming_the_variable(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv(spin.SPIN_ENV, raw)
    with pytest.raises(ValueError, match=f"CHAINS_VLLM_SPIN_MS={raw!r}.*milliseconds"):
        spin.spin_ms()


def test_the_package_declares_the_plugin() -> None:
    plugins = {e.name: e.value for e in entry_points(group="vllm.general_plugins")}
    assert plugins.get("chains_spin") == "nodes.spin:vllm_plugin"


def test_vllms_own_plugin_loader_shortens_the_spin() -> None:
    """What vLLM's engine core and worker do first: load the general plugins."""
    pytest.importorskip("vllm")
    code = (
        "from vllm.plugins import load_general_plugins; load_general_plugins(); "
        "from vllm.distributed.device_communicators.shm_broadcast import SpinCondition; "
        "print(SpinCondition.__init__.__defaults__[-1])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "0.02"
