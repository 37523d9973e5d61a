"""VLLMExtract: text in, a value a program can trust out.

``VLLMExtract(schema=T)`` returns a ``T`` (a msgspec Struct or any type msgspec can
describe), ``VLLMExtract(choice=[...])`` one of the choices, ``VLLMExtract(regex=...)``
or ``grammar=...`` a string matching it. Decoding is constrained by vLLM's
structured outputs (the logits of every token that would break the constraint are
masked before sampling), so the text parses by construction; it is still decoded
and validated into the type. JSON is compact (the engine allows no free whitespace,
``nodes.vllm_engine.structured_config``), and when the schema bounds the reply's
length (``nodes.jsonbound``) ``max_tokens`` defaults to that bound, so the reply is
never cut; otherwise a reply cut by ``max_tokens`` is a ``chains.NodeError``
(code ``reply_cut``) naming the unbounded field. The node's output type in the graph
is the schema's type (``str`` for a choice, regex or grammar).

Why a map node and not a chat: an extraction is a pure function of its input (no
history), so items of every session are independent requests that the shared
engine batches together. It shares one engine per model with ``VLLMChat``
(``nodes.vllm_engine``).

Small models follow examples better than instructions: ``examples=[(text, value),
...]`` are given as earlier chat turns before the input (few-shot), and each
example's value is checked against the constraint when the chain is defined.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import msgspec

import chains
from chains import Text
from nodes.jsonbound import max_chars
from nodes.llm_options import Constraint, caller, checked, make_constraint
from nodes.vllm_base import VLLMBase


def example_reply(c: Constraint, value: Any) -> str:
    """The reply text an example's value stands for (raises ValueError if it breaks ``c``)."""
    if c.kind == "json":
        try:
            value = msgspec.convert(value, c.type, from_attributes=True)
        except msgspec.ValidationError as e:
            raise ValueError(f"{value!r:.200} is not a {c.type!r}: {e}") from e
        text = msgspec.json.encode(value).decode()
    else:
        if not isinstance(value, str):
            raise ValueError(f"{value!r:.200} is not a string")
        text = value
    c.decode(text)
    return text


@chains.node(concurrency=16, device="auto")
class VLLMExtract(VLLMBase):
    """``VLLMExtract(schema=T | choice=[...] | regex=... | grammar=..., system=..., examples=[...],
    prompt_style="chat" | "plain", model="smollm2", **engine_and_sampling_options)``: a map
    from ``chains.Text`` to the value."""

    default_max_tokens = 256

    def __init__(
        self,
        system: str = "Extract the requested information from the user's message.",
        model: str = "smollm2",
        *,
        schema: Any = None,
        choice: Sequence[str] | None = None,
        regex: str | None = None,
        grammar: str | None = None,
        examples: Sequence[tuple[str, Any]] = (),
        prompt_style: Literal["chat", "plain"] = "chat",
        **options: Any,
    ):
        auto_max = "max_tokens" not in options
        super().__init__(system, model, schema=schema, choice=choice, regex=regex, grammar=grammar, **options)
        c = self.constraint
        assert c is not None  # chains_check refused a node without one
        self.prompt_style = prompt_style
        if prompt_style == "plain" and c.kind in ("choice", "regex"):
            self.constraint = c = msgspec.structs.replace(c, lead_space=True)
        self.shots: list[dict[str, str]] = []
        for text, value in examples:
            self.shots += [
                {"role": "user", "content": text},
                {"role": "assistant", "content": example_reply(c, value)},
            ]
        self.longest: int | None = None  # the longest reply the constraint allows, in tokens
        self.unbounded = ""  # why it has no such bound (a field), for the error of a cut reply
        if c.kind == "json":
            self.longest, self.unbounded = max_chars(c.spec)
            if auto_max and self.longest is not None:
                # every token is at least one character: a reply this long is never cut
                self.max_tokens = min(self.longest + 1, self.max_model_len // 2)
        if auto_max and c.kind == "choice":
            # Room for the longest choice spelled one character per token (the mask allows
            # any tokens that spell it, and a model may take "supp"+"or"+"t" rather than
            # the one token "support": seen here), a leading space and the end token.
            self.max_tokens = max(len(x) for x in c.spec) + 2
        self.calls = 0

    @classmethod
    def output_type(cls, *args: Any, schema: Any = None, **kwargs: Any) -> Any:
        """What the node returns for these arguments: the schema's type, else a str."""
        return schema if schema is not None else str

    @classmethod
    def check_extra(cls, arguments: dict[str, Any]) -> None:
        name = cls.__name__
        kinds = ("schema", "choice", "regex", "grammar")
        if all(arguments.get(k) is None for k in kinds):
            raise chains.ChainError(
                "needs a constraint: schema=T (a msgspec.Struct), choice=[...], regex=... or grammar=...",
                node=name,
                where=caller(),
            )
        if arguments.get("prompt_style", "chat") not in ("chat", "plain"):
            raise chains.ChainError(
                f"prompt_style must be 'chat' or 'plain', got {arguments['prompt_style']!r}",
                node=name,
                where=caller(),
            )
        c = make_constraint(name, **{k: arguments.get(k) for k in kinds})
        assert c is not None
        examples = arguments.get("examples", ())
        try:
            pairs = [(t, v) for t, v in examples]
        except (TypeError, ValueError) as e:
            raise chains.ChainError(
                f"examples= must be a list of (text, value) pairs: {e}", node=name, where=caller()
            ) from e
        for i, (text, value) in enumerate(pairs):
            if not isinstance(text, str):
                raise chains.ChainError(f"examples[{i}]: the text must be a str, got {text!r:.80}", node=name)
            try:
                example_reply(c, value)
            except ValueError as e:
                raise chains.ChainError(
                    f"examples[{i}] breaks the constraint: {e}", node=name, where=caller()
                ) from e

    def render(self, text: str) -> str:
        """The prompt text: the chat template, or (``prompt_style="plain"``) a plain
        ``Q: ... / A: ...`` completion, which a very small model continues more reliably.
        The plain prompt ends with ``"A: "``, space included: measured on SmolLM2 that
        way (with a choice allowed to start with one more space), not without it."""
        if self.prompt_style == "plain":
            head = f"{self.system}\n\n" if self.system else ""
            pairs = zip(self.shots[::2], self.shots[1::2], strict=True)
            shots = "".join(f"Q: {q['content']}\nA: {a['content']}\n\n" for q, a in pairs)
            return f"{head}{shots}Q: {text}\nA: "
        messages = [
            {"role": "system", "content": self.system},
            *self.shots,
            {"role": "user", "content": text},
        ]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def prompt(self, text: str) -> list[int]:
        ids = list(self.tokenizer.encode(self.render(text), add_special_tokens=False))
        budget = self.max_model_len - self.max_tokens
        if len(ids) > budget:
            raise chains.NodeError(
                self.node_name(),
                f"prompt of {len(ids)} tokens leaves no room for a {self.max_tokens}-token reply in "
                f"max_model_len={self.max_model_len} (shorten the input, the system prompt or the examples)",
            )
        return ids

    def route_tokens(self, text: Text | str) -> list[int]:
        """The prompt token ids for ``text`` (for prefix-aware routing)."""
        return self.prompt(text.text if isinstance(text, Text) else text)

    async def raw(self, text: str) -> tuple[str, str | None]:
        """The constrained reply text and vLLM's finish reason."""
        final: Any = None
        async for out in self.generate(self.prompt(text), self.params(stream=False)):
            final = out
        self.calls += 1
        o = final.outputs[0]
        return o.text, o.finish_reason

    async def __call__(self, text: Text) -> Any:
        reply, finish = await self.raw(text.text)
        c = self.constraint
        assert c is not None
        try:
            return c.decode(reply)
        except ValueError as e:
            if finish == "length":
                raise chains.NodeError(self.node_name(), self.cut_message(reply), code="reply_cut") from e
            raise chains.NodeError(self.node_name(), f"reply does not satisfy the constraint: {e}") from e

    def cut_message(self, reply: str) -> str:
        """Why a reply ended at ``max_tokens`` before the constraint was met, and the fix."""
        head = f"the reply was cut at max_tokens={self.max_tokens} before it was complete ({reply[-60:]!r})"
        if self.unbounded:
            return (
                f"{head}: the schema does not bound the reply's length at {self.unbounded}; "
                "raise max_tokens or bound that field (msgspec.Meta(max_length=...), ge=/le=)"
            )
        if self.longest is not None and self.max_tokens < self.longest:
            return f"{head}: max_tokens is below the schema's longest reply ({self.longest} tokens)"
        return f"{head}: raise max_tokens"


VLLMExtract = checked(VLLMExtract)
