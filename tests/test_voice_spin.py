"""nodes.spin: vLLM's shared-memory queue readers are told not to spin after each
read (their default is a 1 s ``sched_yield`` loop), only in vLLM's spawned
processes, and an unknown vLLM is left alone. Checked on a stand-in module, so
the test needs no vLLM."""

from __future__ import annotations

import sys
import types

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


def test_nothing_happens_in_the_launching_process(monkeypatch: pytest.MonkeyPatch) -> None:
    def init(self, is_reader, context, notify_address, busy_loop_s: float = 1):
        self.busy_loop_s = busy_loop_s

    cls = fake_vllm(monkeypatch, init)
    assert not spin.quiet_vllm_in_children("__main__", 0.0)  # the launching process
    assert cls(True, None, "ipc://x").busy_loop_s == 1
    assert spin.quiet_vllm_in_children("__mp_main__", 0.0)  # the script re-imported by a spawn
    assert cls(True, None, "ipc://x").busy_loop_s == 0.0
