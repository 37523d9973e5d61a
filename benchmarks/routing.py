"""KV-cache-aware routing on this CPU: two vLLM replicas, five routing policies.

Two ``AsyncLLM`` engines of SmolLM2-135M, each pinned to one core
(``VLLM_CPU_OMP_THREADS_BIND``), prefix caching on, their KV caches capped
(``num_gpu_blocks_override``) so the trace's working set fits across the two
but not in one. The trace is seeded: several tenants, each with its own system
prompt of about 1,000 tokens, a few multi-turn sessions each, sessions starting
as a Poisson process and each next turn following the reply after a think time.
A session keeps its history as token ids (prompt + generated ids + the next user
turn), so turn n+1's prompt starts exactly with turn n's: the re-tokenization
trap (re-rendering the history from text) is measured on the side and printed.

Policies, each on the same trace with both caches reset first:
``round_robin``, ``least_busy``, ``sticky``, ``prefix`` (runtime/routing.py's
routers, choosing between two ``Replica`` objects whose ``inflight`` is the
engine's requests in flight), and ``no_cache``: least busy with a fresh
``cache_salt`` per request, so no request can reuse another's blocks (prefix
caching off, on the same engines). Hits are vLLM's own
``RequestOutput.num_cached_tokens``; ``predicted_hit_rate`` is the prefix
router's bookkeeping (for the other policies a shadow tracker of the same kind
follows their choices), so its error against vLLM's figure shows how well the
router models the engines' caches.

Calibration first: TTFT against prompt length with unique salts (nothing cached),
one request at a time, giving the prefill cost per token.

Run: ``flock /tmp/chains-heavy.lock python benchmarks/routing.py --quick --json out/routing.json
--plot out/routing.png``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import os
import random
import statistics
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import parser, percentile, pyplot, save_figure, slope, write_json
from runtime.replicas import Replica
from runtime.routing import PrefixAware, Route, block_hashes, make_router

POLICIES = ("no_cache", "round_robin", "least_busy", "sticky", "prefix")
WORDS = [
    "account",
    "billing",
    "refund",
    "policy",
    "escalate",
    "customer",
    "order",
    "shipping",
    "warranty",
    "invoice",
    "priority",
    "support",
    "agent",
    "ticket",
    "tenant",
    "contract",
    "renewal",
    "discount",
    "region",
    "language",
    "tone",
    "polite",
    "concise",
    "verify",
    "identity",
    "privacy",
    "data",
    "retention",
    "audit",
    "compliance",
    "schedule",
    "delivery",
    "return",
    "damaged",
    "replacement",
    "subscription",
    "upgrade",
    "downgrade",
    "cancel",
    "trial",
    "payment",
    "card",
    "bank",
    "transfer",
    "receipt",
    "tax",
    "address",
    "phone",
    "email",
    "chat",
    "hours",
    "weekend",
    "holiday",
    "manager",
    "approval",
    "limit",
    "threshold",
]


@dataclass
class Config:
    tenants: int = 6
    sessions_per_tenant: int = 4
    turns: int = 4
    system_tokens: int = 1000
    user_words: tuple[int, int] = (12, 30)
    max_tokens: int = 16
    session_rate: float = 0.5  # sessions started per second
    think_s: float = 1.0
    block_size: int = 32
    kv_blocks: int = 128  # per engine: 4k tokens, fewer than the tenants' system prompts
    max_model_len: int = 2048
    seed: int = 7


@dataclass
class Session:
    tenant: int
    start: float
    users: list[str]
    thinks: list[float]


@dataclass
class Record:
    policy: str
    session: int
    turn: int
    submit: float
    ttft: float
    prompt: int
    cached: int
    predicted: int
    replica: int


@dataclass
class Engine:
    """One vLLM engine: what the router may read of it (block size, cache size)."""

    index: int
    llm: Any
    kv_block_size: int
    kv_cache_blocks: int
    ids: Any = field(default_factory=itertools.count)

    async def request(
        self, ids: list[int], max_tokens: int, salt: str | None
    ) -> tuple[float, int, list[int]]:
        """TTFT (seconds), prompt tokens vLLM found cached, generated token ids."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        params = SamplingParams(max_tokens=max_tokens, temperature=0.0, output_kind=RequestOutputKind.DELTA)
        prompt: dict[str, Any] = {"prompt_token_ids": ids}
        if salt is not None:
            prompt["cache_salt"] = salt
        t0 = time.perf_counter()
        ttft, cached, out = None, 0, []
        async for o in self.llm.generate(prompt, params, request_id=f"e{self.index}-{next(self.ids)}"):
            if ttft is None and o.outputs and o.outputs[0].token_ids:
                ttft = time.perf_counter() - t0
            cached = max(cached, o.num_cached_tokens or 0)
            if o.outputs:
                out.extend(o.outputs[0].token_ids)
        return (ttft if ttft is not None else time.perf_counter() - t0), cached, out


def start_engine(index: int, core: int, cfg: Config, path: Path) -> Engine:
    from vllm import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    from nodes.llm import pick_dtype

    # read by the engine process vLLM spawns now: one core each, a small cache
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = str(core)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    args = AsyncEngineArgs(
        model=str(path),
        tokenizer=str(path),
        dtype=pick_dtype(),
        enforce_eager=True,
        max_model_len=cfg.max_model_len,
        enable_prefix_caching=True,
        block_size=cfg.block_size,
        num_gpu_blocks_override=cfg.kv_blocks,
        disable_log_stats=True,
    )
    llm = AsyncLLM.from_engine_args(args)
    got = llm.vllm_config.cache_config
    return Engine(index, llm, got.block_size, got.num_gpu_blocks or cfg.kv_blocks)


# --- the trace ---------------------------------------------------------------------------------------


def make_trace(cfg: Config, tok: Any) -> tuple[list[list[int]], list[Session]]:
    rng = random.Random(cfg.seed)
    systems = []
    for t in range(cfg.tenants):
        words = [f"You are the assistant of tenant {t}. Follow these rules."]
        while len(tok.encode(" ".join(words), add_special_tokens=False)) < cfg.system_tokens:
            words.append(" ".join(rng.choice(WORDS) for _ in range(12)) + ".")
        text = " ".join(words)
        systems.append(text)
    sessions = []
    clock = 0.0
    order = [t for t in range(cfg.tenants) for _ in range(cfg.sessions_per_tenant)]
    rng.shuffle(order)
    for tenant in order:
        clock += rng.expovariate(cfg.session_rate)
        users = [
            " ".join(rng.choice(WORDS) for _ in range(rng.randint(*cfg.user_words))) + "?"
            for _ in range(cfg.turns)
        ]
        thinks = [rng.expovariate(1.0 / cfg.think_s) for _ in range(cfg.turns)]
        sessions.append(Session(tenant, clock, users, thinks))
    return [[int(x) for x in tok.encode(s, add_special_tokens=False)] for s in systems], sessions


def first_prompt(tok: Any, system: str, user: str) -> list[int]:
    msgs = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    ids = tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True)
    if hasattr(ids, "input_ids"):
        ids = ids["input_ids"]
    return list(ids)


def next_prompt(tok: Any, prompt: list[int], out: list[int], user: str) -> list[int]:
    """The next turn's prompt as token ids: what the engine saw and said, then the new turn."""
    end = tok.convert_tokens_to_ids("<|im_end|>")
    tail = [] if out and out[-1] == end else [end]
    turn = tok.encode(
        "\n<|im_start|>user\n" + user + "<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False
    )
    return prompt + out + tail + turn


def retokenization_gap(tok: Any, system: str, users: list[str], replies: list[str], kept: list[int]) -> int:
    """Tokens of the kept-ids prompt after which the re-rendered-from-text one differs."""
    msgs = [{"role": "system", "content": system}]
    for u, r in zip(users[:-1], replies, strict=False):
        msgs += [{"role": "user", "content": u}, {"role": "assistant", "content": r}]
    msgs.append({"role": "user", "content": users[-1]})
    ids = tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True)
    if hasattr(ids, "input_ids"):
        ids = ids["input_ids"]
    same = 0
    for a, b in zip(ids, kept, strict=False):
        if a != b:
            break
        same += 1
    return len(kept) - same


# --- one policy -----------------------------------------------------------------------------------------


async def run_policy(
    policy: str,
    engines: list[Engine],
    cfg: Config,
    tok: Any,
    systems_text: list[str],
    sessions: list[Session],
) -> tuple[list[Record], dict[str, Any]]:
    for e in engines:
        await e.llm.reset_prefix_cache()
    replicas = []
    for e in engines:
        r = Replica(e.index + 1)
        r.state, r.instance = "ready", e
        replicas.append(r)
    router = make_router("least_busy" if policy == "no_cache" else policy)
    # the prefix router's own bookkeeping, or a shadow of it following another policy's choices
    tracker = router if isinstance(router, PrefixAware) else PrefixAware()
    if isinstance(router, PrefixAware):
        router.abs_threshold = 2
    tracker.block_size = cfg.block_size
    records: list[Record] = []
    retok: list[int] = []
    t0 = time.perf_counter()

    async def session(si: int, s: Session) -> None:
        await asyncio.sleep(max(0.0, s.start - (time.perf_counter() - t0)))
        system = systems_text[s.tenant]
        prompt = first_prompt(tok, system, s.users[0])
        replies: list[str] = []
        for turn in range(len(s.users)):
            if turn and policy == "prefix":
                retok.append(retokenization_gap(tok, system, s.users[: turn + 1], replies, prompt))
            route = Route(f"s{si}", (prompt,), tokens_of=lambda p: p)
            r = router.choose(replicas, route)
            predicted = (route.predicted_cached or 0) if tracker is router else _shadow(tracker, r, prompt)
            if policy == "no_cache":
                predicted = 0
            r.inflight += 1
            submit = time.perf_counter() - t0
            try:
                ttft, cached, out = await r.instance.request(
                    prompt, cfg.max_tokens, uuid.uuid4().hex if policy == "no_cache" else None
                )
            finally:
                r.inflight -= 1
            tracker.stats.observe_actual(cached, predicted=predicted, prompt=len(prompt))
            tracker.remember(r, prompt + out)
            records.append(Record(policy, si, turn, submit, ttft, len(prompt), cached, predicted, r.id))
            replies.append(tok.decode(out, skip_special_tokens=True))
            if turn + 1 < len(s.users):
                await asyncio.sleep(s.thinks[turn])
                prompt = next_prompt(tok, prompt, out, s.users[turn + 1])

    await asyncio.gather(*(session(i, s) for i, s in enumerate(sessions)))
    elapsed = max(r.submit + r.ttft for r in records)
    per_replica = [sum(1 for r in records if r.replica == x.id) for x in replicas]
    extra = {
        "elapsed_s": elapsed,
        "per_replica": per_replica,
        "abs_error_tokens_per_request": tracker.stats.abs_error_tokens / max(1, tracker.stats.observed),
        "guard_overrides": tracker.stats.guard_overrides,
        "retokenization_gap": retok,
    }
    return records, extra


def _shadow(tracker: PrefixAware, r: Replica, tokens: list[int]) -> int:
    """What a prefix tracker predicts is cached on ``r``, which another policy chose."""
    got = tracker.matched(r, block_hashes(tokens, tracker.block_size))
    bs = tracker.block_size
    predicted = min(got * bs, ((len(tokens) - 1) // bs) * bs)
    tracker.stats.record(len(tokens), predicted)
    return predicted


# --- calibration ------------------------------------------------------------------------------------------


async def calibrate(engines: list[Engine], tok: Any, lengths: list[int], reps: int) -> tuple[float, list]:
    rng = random.Random(1)
    points = []
    for e in engines:  # warm both engines first
        await e.request([rng.randrange(1000, 20000) for _ in range(64)], 2, uuid.uuid4().hex)
    for n in lengths:
        for _ in range(reps):
            for e in engines:
                ids = [rng.randrange(1000, 20000) for _ in range(n)]
                ttft, cached, _ = await e.request(ids, 1, uuid.uuid4().hex)
                assert cached == 0
                points.append((n, ttft * 1000.0))
    ms_per_token = slope([p[0] for p in points], [p[1] for p in points])
    return ms_per_token, points


# --- main -------------------------------------------------------------------------------------------------


def summarize(policy: str, recs: list[Record], extra: dict[str, Any]) -> dict[str, Any]:
    ttfts = [r.ttft * 1000.0 for r in recs]
    prompt = sum(r.prompt for r in recs)
    return {
        "policy": policy,
        "ttft_p50_ms": percentile(ttfts, 0.5),
        "ttft_p95_ms": percentile(ttfts, 0.95),
        "ttft_p99_ms": percentile(ttfts, 0.99),
        "hit_rate": sum(r.cached for r in recs) / prompt,
        "predicted_hit_rate": sum(r.predicted for r in recs) / prompt,
        "requests_per_s": len(recs) / extra["elapsed_s"],
    }


def plot(path: Path, all_recs: dict[str, list[Record]], calib: list, ms_per_token: float) -> None:
    plt = pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for policy, recs in all_recs.items():
        xs = sorted(r.ttft * 1000.0 for r in recs)
        a1.plot(xs, [(i + 1) / len(xs) for i in range(len(xs))], label=policy, drawstyle="steps-post")
    a1.set_xscale("log")
    a1.set_xlabel("TTFT (ms)")
    a1.set_ylabel("fraction of requests")
    a1.set_title("TTFT distribution per routing policy")
    a1.legend()
    a2.scatter([p[0] for p in calib], [p[1] for p in calib], s=10)
    a2.set_xlabel("prompt tokens (nothing cached)")
    a2.set_ylabel("TTFT (ms)")
    a2.set_title(f"calibration: {ms_per_token:.2f} ms/token")
    save_figure(fig, path)


async def amain(cfg: Config, args: Any) -> None:
    from transformers import AutoTokenizer

    from nodes.resolve import llm_path

    path = llm_path("smollm2")
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    systems, sessions = make_trace(cfg, tok)
    systems_text = [tok.decode(s) for s in systems]
    n_req = len(sessions) * cfg.turns
    print(
        f"trace: {cfg.tenants} tenants x {cfg.sessions_per_tenant} sessions x {cfg.turns} turns = {n_req} "
        f"requests; system prompts {statistics.fmean(len(s) for s in systems):.0f} tokens; "
        f"KV cache {cfg.kv_blocks} blocks of {cfg.block_size} per engine",
        flush=True,
    )
    t = time.perf_counter()
    engines = [start_engine(i, core, cfg, path) for i, core in enumerate((0, 1))]
    print(
        f"engines up in {time.perf_counter() - t:.0f} s; block size {engines[0].kv_block_size}, "
        f"{engines[0].kv_cache_blocks} blocks each",
        flush=True,
    )
    try:
        lengths = [128, 512, 1024, 1536] if not args.quick else [128, 768, 1536]
        lengths = [n for n in lengths if n < cfg.max_model_len - 8]
        ms_per_token, calib = await calibrate(engines, tok, lengths, 1 if args.quick else 2)
        print(f"calibration: prefill {ms_per_token:.3f} ms/token, points {calib}", flush=True)
        runs, all_recs = [], {}
        for policy in POLICIES:
            recs, extra = await run_policy(policy, engines, cfg, tok, systems_text, sessions)
            s = summarize(policy, recs, extra)
            runs.append(s)
            all_recs[policy] = recs
            gap = extra["retokenization_gap"]
            print(
                f"{policy:12s} ttft p50 {s['ttft_p50_ms']:7.0f} p95 {s['ttft_p95_ms']:7.0f} "
                f"p99 {s['ttft_p99_ms']:7.0f} ms  hit {s['hit_rate']:.2f} "
                f"predicted {s['predicted_hit_rate']:.2f} "
                f"(|err| {extra['abs_error_tokens_per_request']:.0f} tok/req) "
                f"{s['requests_per_s']:.2f} req/s"
                f"  per replica {extra['per_replica']}  guard overrides {extra['guard_overrides']}"
                f"  mean prompt {statistics.fmean(r.prompt for r in recs):.0f} tokens"
                + (
                    f"  re-rendered history diverges in {sum(1 for g in gap if g)}/{len(gap)} turns, "
                    f"mean {statistics.fmean(gap):.0f} tokens"
                    if gap
                    else ""
                ),
                flush=True,
            )
    finally:
        for e in engines:
            with contextlib.suppress(Exception):
                e.llm.shutdown()
        engines.clear()
        gc.collect()  # before interpreter exit, where vLLM's __del__ would shut down again
    write_json(args.json, {"prefill_ms_per_token": ms_per_token, "runs": runs})
    if args.plot:
        plot(args.plot, all_recs, calib, ms_per_token)


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="a smoke run of a few requests")
    args = p.parse_args()
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cfg = Config()
    if args.quick:
        cfg = Config(tenants=6, sessions_per_tenant=2, turns=4, session_rate=0.2, think_s=2.0, kv_blocks=112)
    if args.tiny:
        cfg = Config(
            tenants=2,
            sessions_per_tenant=1,
            turns=2,
            system_tokens=300,
            kv_blocks=72,
            max_tokens=4,
            max_model_len=1024,
        )
    asyncio.run(amain(cfg, args))


if __name__ == "__main__":
    main()
