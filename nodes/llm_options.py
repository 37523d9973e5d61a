"""What a vLLM node may be told, checked when the chain is defined.

Why a module of its own: ``import vllm`` takes ~15 s here, far too slow for
defining a chain (``chains graph``, ``chains lock``, a unit test). So the vLLM
engine arguments and sampling parameters a node accepts are a checked list of
names (``tests/integration/test_structured.py`` asserts each one is still a field
of the installed ``vllm.AsyncEngineArgs`` / ``vllm.SamplingParams``), and a
structured-output constraint is built and compiled here, once, at definition:
a type msgspec cannot describe, an empty choice, a regex or grammar the
constraint compiler rejects is a ``chains.ChainError`` naming the node before
any model loads.

``checked(node_class)`` is how the check runs at definition: a class node's
constructor runs only when a runtime loads a replica, so the template the user
creates (``VLLMChat(...)``) goes through the class's ``chains_check`` first.
"""

from __future__ import annotations

import difflib
import json
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import msgspec

import chains

# vLLM engine arguments (fields of ``vllm.AsyncEngineArgs``) a node passes through.
# One engine is shared by every node of the same model and the same engine options.
ENGINE_OPTIONS: dict[str, str] = {
    "quantization": "weight quantization method (e.g. 'fp8', 'awq'; the checkpoint decides)",
    "enable_prefix_caching": "reuse the KV cache of shared prompt prefixes",
    "max_model_len": "context length in tokens (prompt + reply)",
    "speculative_config": "speculative decoding, e.g. {'method': 'ngram', 'num_speculative_tokens': 3}",
    "gpu_memory_utilization": "share of GPU memory for weights and KV cache (GPU only)",
    "kv_cache_memory_bytes": "KV cache size in bytes (GPU; on CPU use kv_cache_gib)",
    "max_num_seqs": "requests decoded together per engine step",
    "max_num_batched_tokens": "tokens per engine step (prefill chunk size)",
    "enable_chunked_prefill": "split long prompts across engine steps",
    "dtype": "'auto' (bf16 where the CPU/GPU has it, else float32), 'float32', 'bfloat16', 'float16'",
    "kv_cache_dtype": "KV cache element type ('auto', 'fp8', ...)",
    "block_size": "KV cache block size in tokens",
    "enforce_eager": "no CUDA graphs (always on for CPU)",
    "structured_outputs_config": (
        "default {'backend': 'xgrammar', 'disable_any_whitespace': True} (compact JSON); "
        "keys given replace those"
    ),
    "tensor_parallel_size": "GPUs to shard the model over",
    "cpu_offload_gb": "GiB of weights kept in CPU memory (GPU)",
    "trust_remote_code": "run a model folder's own Python code",
    "revision": "model revision (a local folder ignores it)",
}
# Node options that are not vLLM fields but end up in the engine's set-up.
NODE_ENGINE_OPTIONS: dict[str, str] = {
    "kv_cache_gib": "KV cache size in GiB on CPU (sets VLLM_CPU_KVCACHE_SPACE)",
    "gpu": "GPU share of a replica: becomes gpu_memory_utilization when that is not given",
    "share_engine": "True (default): one engine per model and options in a process; False: its own",
}
# Sampling defaults (fields of ``vllm.SamplingParams``) a node applies to every request.
SAMPLING_OPTIONS: dict[str, str] = {
    "max_tokens": "most tokens per reply",
    "min_tokens": "fewest tokens per reply",
    "temperature": "0 decodes greedily",
    "top_p": "nucleus sampling mass",
    "top_k": "sample among the k likeliest tokens",
    "min_p": "drop tokens below this share of the likeliest",
    "repetition_penalty": "> 1 discourages repeats",
    "presence_penalty": "penalise tokens already present",
    "frequency_penalty": "penalise tokens by their count",
    "seed": "per-request sampling seed",
    "stop": "strings that end a reply",
    "stop_token_ids": "token ids that end a reply",
    "ignore_eos": "go on past the end-of-sequence token",
}

ConstraintKind = Literal["json", "choice", "regex", "grammar"]


class Constraint(msgspec.Struct, frozen=True):
    """One structured-output constraint: what vLLM masks decoding with, and how the
    text it produces becomes a value (``decode``)."""

    kind: ConstraintKind
    spec: Any  # the JSON schema (dict), the choices (list), the regex or the grammar (str)
    type: Any = None  # the msgspec type a "json" constraint decodes into
    # Allow one space before a choice or a regex match (dropped when decoding): after a
    # plain "A: " prompt the model may still start with a space-led token like " billing".
    lead_space: bool = False

    def params(self) -> dict[str, Any]:
        """Keyword arguments for ``vllm.sampling_params.StructuredOutputsParams``."""
        if self.kind == "json":
            # (whitespace: vLLM 0.32's backends read only the engine-level
            # structured_outputs_config={"disable_any_whitespace": True}, not a request's:
            # nodes.vllm_engine sets it by default)
            return {"json": self.spec}
        if self.lead_space and self.kind == "choice":
            return {"regex": " ?(" + "|".join(re.escape(c) for c in self.spec) + ")"}
        if self.lead_space and self.kind == "regex":
            return {"regex": f" ?(?:{self.spec})"}
        return {self.kind: self.spec}

    def decode(self, text: str) -> Any:
        """The value ``text`` stands for; ``ValueError`` when it does not satisfy the constraint."""
        if self.lead_space and self.kind in ("choice", "regex") and text.startswith(" "):
            text = text[1:]
        if self.kind == "json":
            try:
                return msgspec.json.decode(text, type=self.type)
            except msgspec.DecodeError as e:  # ValidationError is a DecodeError
                raise ValueError(f"{e} in {text!r:.200}") from e
        if self.kind == "choice" and text not in self.spec:
            raise ValueError(f"{text!r:.200} is not one of {self.spec}")
        if self.kind == "regex" and re.fullmatch(self.spec, text) is None:
            raise ValueError(f"{text!r:.200} does not match {self.spec!r}")
        return text


def caller() -> str:
    """file:line of the user code that defined a node (outside this package and chains)."""
    f = sys._getframe(1)
    while f is not None:
        name = f.f_code.co_filename
        if "/nodes/" not in name and "/chains/" not in name:
            return f"{name}:{f.f_lineno}"
        f = f.f_back
    return "<unknown>"


def _error(node: str, message: str) -> chains.ChainError:
    return chains.ChainError(message, node=node, where=caller())


def _names(options: Mapping[str, str]) -> str:
    return ", ".join(sorted(options))


def check_options(node: str, options: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a node's extra keyword options into (engine options, sampling defaults).

    An unknown name is a ``ChainError`` naming the node, the option and the valid ones."""
    engine: dict[str, Any] = {}
    sampling: dict[str, Any] = {}
    for name, value in options.items():
        if name in ENGINE_OPTIONS or name in NODE_ENGINE_OPTIONS:
            engine[name] = value
        elif name in SAMPLING_OPTIONS:
            sampling[name] = value
        else:
            close = difflib.get_close_matches(
                name, [*ENGINE_OPTIONS, *NODE_ENGINE_OPTIONS, *SAMPLING_OPTIONS], 1
            )
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise _error(
                node,
                f"unknown option {name!r}{hint}. Engine options: {_names(ENGINE_OPTIONS)}, "
                f"{_names(NODE_ENGINE_OPTIONS)}; sampling options: {_names(SAMPLING_OPTIONS)}",
            )
    _check_values(node, engine, sampling)
    return engine, sampling


def _check_values(node: str, engine: dict[str, Any], sampling: dict[str, Any]) -> None:
    def want(ok: bool, name: str, what: str, value: Any) -> None:
        if not ok:
            raise _error(node, f"option {name}={value!r}: {what}")

    for name in (
        "max_tokens",
        "min_tokens",
        "top_k",
        "max_model_len",
        "max_num_seqs",
        "max_num_batched_tokens",
    ):
        for opts in (engine, sampling):
            if name in opts:
                v = opts[name]
                lo = -1 if name == "top_k" else (0 if name == "min_tokens" else 1)
                want(
                    isinstance(v, int) and not isinstance(v, bool) and v >= lo,
                    name,
                    f"must be an int >= {lo}",
                    v,
                )
    for name in (
        "temperature",
        "presence_penalty",
        "frequency_penalty",
        "repetition_penalty",
        "min_p",
        "top_p",
    ):
        if name in sampling:
            v = sampling[name]
            want(isinstance(v, int | float) and not isinstance(v, bool), name, "must be a number", v)
    if "temperature" in sampling:
        want(sampling["temperature"] >= 0, "temperature", "must be >= 0", sampling["temperature"])
    if "top_p" in sampling:
        want(0 < sampling["top_p"] <= 1, "top_p", "must be in (0, 1]", sampling["top_p"])
    for name in ("gpu_memory_utilization", "gpu"):
        if name in engine:
            v = engine[name]
            want(isinstance(v, int | float) and 0 < v <= 1, name, "must be a share of the GPU in (0, 1]", v)
    if (
        "gpu" in engine
        and "gpu_memory_utilization" in engine
        and engine["gpu"] != engine["gpu_memory_utilization"]
    ):
        raise _error(node, "give either gpu or gpu_memory_utilization, not both with different values")
    if "kv_cache_gib" in engine:
        v = engine["kv_cache_gib"]
        want(
            isinstance(v, int) and not isinstance(v, bool) and v > 0,
            "kv_cache_gib",
            "must be whole GiB > 0",
            v,
        )
    for name in (
        "enable_prefix_caching",
        "enable_chunked_prefill",
        "enforce_eager",
        "trust_remote_code",
        "share_engine",
    ):
        if name in engine:
            want(isinstance(engine[name], bool), name, "must be True or False", engine[name])
    for name in ("speculative_config", "structured_outputs_config"):
        if name in engine:
            want(isinstance(engine[name], dict), name, "must be a dict of that config's fields", engine[name])
    if "dtype" in engine:
        ok = ("auto", "float32", "bfloat16", "float16", "half", "float")
        want(engine["dtype"] in ok, "dtype", f"must be one of {ok}", engine["dtype"])


def make_constraint(
    node: str,
    *,
    schema: Any = None,
    choice: Sequence[str] | None = None,
    regex: str | None = None,
    grammar: str | None = None,
) -> Constraint | None:
    """The constraint the options ask for (``None`` for free text), checked and compiled."""
    given = {
        k: v for k, v in (("schema", schema), ("choice", choice), ("regex", regex), ("grammar", grammar))
    }
    set_ = [k for k, v in given.items() if v is not None]
    if len(set_) > 1:
        raise _error(node, f"give one of schema=, choice=, regex=, grammar=; got {', '.join(set_)}")
    if not set_:
        return None
    if schema is not None:
        c = Constraint("json", _json_schema(node, schema), schema)
    elif choice is not None:
        if isinstance(choice, str) or not all(isinstance(c, str) and c for c in choice) or not choice:
            raise _error(node, f"choice= must be a non-empty list of non-empty strings, got {choice!r:.200}")
        if len(set(choice)) != len(choice):
            raise _error(node, f"choice= lists a value twice: {list(choice)}")
        c = Constraint("choice", list(choice))
    elif regex is not None:
        if not isinstance(regex, str) or not regex:
            raise _error(node, f"regex= must be a non-empty pattern string, got {regex!r:.200}")
        try:
            re.compile(regex)
        except re.error as e:
            raise _error(node, f"regex= {regex!r} is not a valid regular expression: {e}") from e
        c = Constraint("regex", regex)
    else:
        if not isinstance(grammar, str) or not grammar.strip():
            raise _error(
                node, f"grammar= must be a non-empty EBNF (GBNF) grammar string, got {grammar!r:.200}"
            )
        c = Constraint("grammar", grammar)
    compile_check(node, c)
    return c


def _json_schema(node: str, t: Any) -> dict[str, Any]:
    """The JSON schema of a msgspec-describable type, with a top-level ``$ref`` inlined
    (msgspec puts a Struct in ``$defs``; every backend takes the inlined form)."""
    if isinstance(t, Mapping | str):
        raise _error(
            node,
            f"schema= takes a type (a msgspec.Struct subclass, e.g. class Slots(msgspec.Struct): ...), "
            f"not {type(t).__name__}",
        )
    try:
        s = msgspec.json.schema(t)
    except (TypeError, ValueError) as e:
        raise _error(
            node, f"schema= {t!r} has no JSON schema: {e} (use a msgspec.Struct of plain types)"
        ) from e
    ref = s.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        defs = dict(s.get("$defs", {}))
        top = defs.get(ref.removeprefix("#/$defs/"))
        if top is not None:
            s = {**top, **({"$defs": defs} if len(defs) > 1 or _refers(top) else {})}
    return s


def _refers(s: Any) -> bool:
    return "$ref" in json.dumps(s)


def compile_check(node: str, c: Constraint) -> None:
    """Compile the constraint with xgrammar (vLLM's default backend) when it is
    installed, so what the engine would reject at the first request is refused now.
    Costs the xgrammar import (~2-4 s here) once per process; skipped without it."""
    try:
        import xgrammar
    except ImportError:
        return
    try:
        if c.kind == "json":
            xgrammar.Grammar.from_json_schema(json.dumps(c.spec), any_whitespace=False)
        elif c.kind == "regex":
            xgrammar.Grammar.from_regex(c.spec)
        elif c.kind == "grammar":
            xgrammar.Grammar.from_ebnf(c.spec)
    except Exception as e:  # xgrammar raises RuntimeError with the parser's message
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        msg = re.sub(r"^\[[0-9:]+\] \S+:[0-9]+: ", "", msg)  # xgrammar's time and C++ source line
        raise _error(
            node, f"{'schema' if c.kind == 'json' else c.kind}= cannot constrain decoding: {msg}"
        ) from e


class TypedTemplate(chains.NodeTemplate):
    """A template whose output type depends on its arguments (``VLLMExtract(schema=T)``
    gives ``T``), so the graph's type check sees ``T`` and not the class's ``Any``."""

    out_type: Any = None

    def __call__(self, *inputs: Any) -> Any:
        handle = super().__call__(*inputs)
        if self.out_type is not None:
            handle.type = self.out_type
        return handle


class CheckedNodeClass(chains.NodeClass):
    """A class node whose options are checked when its template is created (at chain
    definition), by the class's ``chains_check(*args, **kwargs)``; its optional
    ``output_type(*args, **kwargs)`` names the output type those arguments give, and
    ``template_arguments(kwargs)`` the keyword arguments the template keeps."""

    def __call__(self, *args: Any, **kwargs: Any) -> chains.NodeTemplate:
        super().__call__(*args, **kwargs)  # refuses node inputs given here
        impl = self.spec.impl
        impl.chains_check(*args, **kwargs)
        normalise = getattr(impl, "template_arguments", None)
        if normalise is not None:  # e.g. tools= functions as Tools (a stable repr for the lock)
            kwargs = normalise(kwargs)
        template = TypedTemplate(self.spec, args, kwargs)
        typer = getattr(impl, "output_type", None)
        template.out_type = typer(*args, **kwargs) if typer is not None else None
        return template


def checked(node_class: Any) -> CheckedNodeClass:
    return CheckedNodeClass(node_class.spec)
