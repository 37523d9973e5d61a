"""One vLLM engine per model in a process, shared by every node that serves it.

Why: a ``VLLMChat`` and a ``VLLMExtract`` on the same model in one chain (or two
chains in one server) would otherwise each start an engine process with its own
weights and KV cache, and the engine's continuous batching would be split in
two. Instead engines live in a process-wide registry keyed by the model path and
the engine arguments: the first node to start one builds it, the others attach,
and the last one to leave shuts it down (reference counted).

A dead engine (its process gone, or vLLM's ``EngineDeadError``) is dropped from
the registry as soon as it is noticed, so a replica rebuilt after the loss gets a
fresh engine while the nodes still holding the dead one release it in their own
time. The registry is guarded by a thread lock and waits on a thread event, not on
an event loop's primitives: nodes may start from different loops (one per test
module, say) over a process's life.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from dataclasses import dataclass, field
from typing import Any

import anyio
import msgspec

from chains import ModelError
from chains.enginelogs import engine_output_to_log


def pick_dtype() -> str:
    """bfloat16 on a GPU or a CPU with native bf16 (AVX512-BF16, AMX), else float32:
    on an AVX2-only CPU vLLM's bf16 path is emulated, and float32 measured here
    5x faster to the first token (151 against 784 ms) and 2.5x the throughput
    over 8 streams. (Structured output needs float32 logits on CPU: vLLM converts
    them for the grammar mask itself, whichever dtype runs the model.)"""
    try:
        import torch

        if torch.cuda.is_available():
            return "bfloat16"
    except Exception:
        pass
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return "float32"
    return "bfloat16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "float32"


def on_gpu() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


def engine_args(path: str, options: dict[str, Any], owner: object = None) -> dict[str, Any]:
    """``AsyncEngineArgs`` keyword arguments: chains' defaults for a local model, then the
    node's engine options. ``kv_cache_gib`` (CPU KV cache, an environment variable for
    vLLM) stays in the result for the registry to apply; ``gpu`` (or, on a Ray actor,
    the replica's ``CHAINS_GPU_SHARE``) becomes ``gpu_memory_utilization`` when that is
    not given. ``share_engine=False`` keys the
    engine to ``owner`` (a replica of its own: several replicas of one node in a
    process then have an engine each, for KV-cache-aware routing between them)."""
    opts = dict(options)
    gpu = opts.pop("gpu", None)
    if gpu is None:  # a Ray actor carries its replica's GPU share (transport/remote/ray.py)
        gpu = os.environ.get("CHAINS_GPU_SHARE") or None
    if not opts.pop("share_engine", True):
        opts["chains_owner"] = id(owner)
    args: dict[str, Any] = {
        "model": path,
        "tokenizer": path,
        "dtype": "auto",
        "enforce_eager": True,
        "max_model_len": 2048,
        "disable_log_stats": True,
        # a KVCACHE_SPACE the user exported stays the default
        "kv_cache_gib": int(os.environ.get("VLLM_CPU_KVCACHE_SPACE") or 1),
    }
    args.update(opts)
    args["structured_outputs_config"] = structured_config(opts.get("structured_outputs_config"))
    if args["dtype"] == "auto":
        args["dtype"] = pick_dtype()
    if gpu is not None and "gpu_memory_utilization" not in opts:
        args["gpu_memory_utilization"] = float(gpu)
    if "gpu_memory_utilization" not in args and on_gpu():
        args["gpu_memory_utilization"] = 0.3  # leave room for the other models of a chain
    if not on_gpu():
        args.pop("gpu_memory_utilization", None)  # meaningless (and refused) on CPU
    return args


# JSON without free whitespace: xgrammar (and guidance) otherwise let a model write
# newlines and spaces between tokens forever (seen: SmolLM2 writing `{\n  "item"\n\n:\n\n`
# until max_tokens, 4 replies in 10 on short order lines). vLLM 0.32 reads the switch
# only from the engine's config, not from a request, and refuses it under the "auto"
# backend, so the backend is named too.
WHITESPACE_FREE_BACKENDS = ("xgrammar", "guidance")


def structured_config(given: dict[str, Any] | None) -> dict[str, Any]:
    """The engine's ``structured_outputs_config``: compact JSON by default (xgrammar with
    ``disable_any_whitespace``), the node's own keys over it. A backend that cannot
    drop whitespace (outlines, lm-format-enforcer) gets no such key."""
    cfg = dict(given or {})
    cfg.setdefault("backend", "xgrammar")
    if cfg["backend"] in WHITESPACE_FREE_BACKENDS:
        cfg.setdefault("disable_any_whitespace", True)
    return cfg


class EngineOptionError(ModelError):
    """vLLM refused an engine option: the option(s) and vLLM's own message, not a
    missing package (``nodes.resolve.loading`` passes a ``ModelError`` through)."""


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def option_error(e: BaseException, args: dict[str, Any]) -> EngineOptionError | None:
    """The engine options an engine-argument error is about, or None when it names none
    (a pydantic error names a config class, e.g. ``StructuredOutputsConfig``, or a field)."""
    msg = str(e)
    words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", msg))
    named = {k for k in args if k in words or k in {_snake(w) for w in words}}
    named -= {"model", "tokenizer"}
    if not named:
        return None
    opts = ", ".join(f"{k}={args[k]!r}" for k in sorted(named))
    lines = [ln.strip() for ln in msg.strip().splitlines() if ln.strip()]
    short = " / ".join(lines[:6])
    return EngineOptionError(f"vLLM refused the engine option {opts}: {type(e).__name__}: {short}")


@dataclass(eq=False)
class SharedEngine:
    """One engine and the nodes using it."""

    key: str
    args: dict[str, Any]
    engine: Any = None  # vllm AsyncLLM once built
    users: int = 0
    error: BaseException | None = None
    built: threading.Event = field(default_factory=threading.Event)

    @property
    def dead(self) -> bool:
        """The engine process is gone or vLLM declared it dead (``errored``)."""
        if self.error is not None:
            return True
        if self.engine is None:
            return False
        try:
            return bool(self.engine.errored)
        except Exception:
            return True


_lock = threading.Lock()
_engines: dict[str, SharedEngine] = {}


def registry() -> dict[str, SharedEngine]:
    """The live engines by key (a copy; for tests and diagnostics)."""
    with _lock:
        return dict(_engines)


def _key(args: dict[str, Any]) -> str:
    return msgspec.json.encode(args, order="sorted").decode()


def _build(entry: SharedEngine) -> None:
    # vLLM's output (its import, its config checks, its engine processes) goes to the
    # run log as under `chains run`, not over the user's terminal (chains/enginelogs.py)
    with engine_output_to_log("vllm"):
        _start_engine(entry)


def _start_engine(entry: SharedEngine) -> None:
    from vllm import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    args = dict(entry.args)
    # The CPU KV cache is sized by an environment variable the engine process reads
    # when it starts (a GPU sizes it from gpu_memory_utilization/kv_cache_memory_bytes).
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(args.pop("kv_cache_gib"))
    args.pop("chains_owner", None)  # only part of the registry key
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # its INFO lines drown a CLI's output
    try:
        # the options are validated here (pydantic), before any engine process starts;
        # then what AsyncLLM.from_engine_args does with them
        ea = AsyncEngineArgs(**args)
        config = ea.create_engine_config()
    except Exception as e:
        raise (option_error(e, args) or e) from e
    entry.engine = AsyncLLM.from_vllm_config(
        config, enable_log_requests=ea.enable_log_requests, disable_log_stats=ea.disable_log_stats
    )


async def acquire(args: dict[str, Any]) -> SharedEngine:
    """The live engine for these arguments, built here if there is none (the build,
    ~25-55 s on this CPU, runs in a worker thread). Pair with ``release``."""
    key = _key(args)
    with _lock:
        entry = _engines.get(key)
        if entry is not None and entry.dead:
            del _engines[key]  # its holders release it in their own time
            entry = None
        builder = entry is None
        if entry is None:
            entry = _engines[key] = SharedEngine(key, dict(args))
        entry.users += 1
    try:
        if builder:
            try:
                await anyio.to_thread.run_sync(_build, entry)
            except BaseException as e:
                entry.error = e
                raise
            finally:
                entry.built.set()
        else:
            await anyio.to_thread.run_sync(entry.built.wait, abandon_on_cancel=True)
            if entry.error is not None:
                raise ModelError(
                    f"the shared vLLM engine failed to start: {type(entry.error).__name__}: {entry.error}"
                )
    except BaseException:
        release(entry)
        raise
    return entry


def release(entry: SharedEngine) -> None:
    """One user fewer; the last one shuts the engine down."""
    with _lock:
        entry.users -= 1
        last = entry.users <= 0
        if last and _engines.get(entry.key) is entry:
            del _engines[entry.key]
    if last and entry.engine is not None:
        engine, entry.engine = entry.engine, None
        with contextlib.suppress(Exception):  # a dead engine may fail to shut down; it is gone anyway
            engine.shutdown()
