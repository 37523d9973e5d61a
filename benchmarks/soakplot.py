"""The soak's plots: TTFA percentiles per wave (per 10% of the run), the server's RSS
and live callers over the run, and the density curve (TTFA and the probe per level)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks._common import pyplot, save_figure


def plot(out: dict[str, Any], path: Path) -> None:
    """One PNG per view beside ``path``: ``<stem>_ttfa.png``, ``<stem>_rss.png``,
    ``<stem>_density.png`` (those whose mode ran)."""
    plt = pyplot()
    stem = path.with_suffix("")
    soak = out.get("soak")
    if soak:
        fig, ax = plt.subplots(figsize=(7, 3.6))
        xs = [100 * w["wave"] / len(soak["waves"]) for w in soak["waves"]]
        for q in ("p50", "p95", "p99"):
            ax.plot(xs, [w["ttfa_ms"][q] for w in soak["waves"]], marker="o", label=q)
        ax.set_xlabel("% of the soak's sessions completed")
        ax.set_ylabel("time to first audio (ms)")
        ax.set_title("Churn soak: TTFA per 10% of the run")
        ax.set_ylim(bottom=0)
        ax.legend()
        save_figure(fig, Path(f"{stem}_ttfa.png"))
        fig, ax = plt.subplots(figsize=(7, 3.6))
        t = [s[0] for s in soak["rss"]]
        ax.plot(t, [s[1] for s in soak["rss"]], color="tab:red", label="server RSS (MiB)")
        ax.set_xlabel("seconds into the soak")
        ax.set_ylabel("RSS (MiB)")
        ax.set_ylim(bottom=0)
        ax2 = ax.twinx()
        ax2.plot(t, [s[2] for s in soak["rss"]], color="tab:gray", alpha=0.5, label="live callers")
        ax2.set_ylabel("live callers")
        ax.set_title("Churn soak: server RSS over the run")
        fig.legend(loc="lower right")
        save_figure(fig, Path(f"{stem}_rss.png"))
    dens = out.get("density")
    if dens:
        fig, ax = plt.subplots(figsize=(7, 3.6))
        lv = [r["level"] for r in dens["levels"]]
        ax.plot(lv, [r["ttfa_ms"]["p95"] for r in dens["levels"]], marker="o", label="TTFA p95")
        ax.plot(lv, [r["ttfa_ms"]["p50"] for r in dens["levels"]], marker="o", label="TTFA p50")
        ax.plot(lv, [r["probe_ms"] for r in dens["levels"]], marker="s", label="probe caller")
        ax.axhline(1.1 * dens["idle_probe_ms"], color="gray", ls="--", label="probe idle +10%")
        ax.set_xlabel("live sessions")
        ax.set_ylabel("ms")
        ax.set_yscale("log")
        ax.set_title("Density: TTFA by live sessions")
        ax.legend()
        save_figure(fig, Path(f"{stem}_density.png"))


__all__ = ["plot", "tables"]


def tables(out: dict[str, Any]) -> str:
    """The figures as markdown tables (for BENCHMARKS.md): density per level, soak per wave."""
    lines: list[str] = []
    dens = out.get("density")
    if dens:
        lines += [
            "| live (target) | TTFA p50 / p95 ms | probe ms (idle) | server cores | callers' cores "
            "| CPU ms per session·s | RSS KiB per session | pass |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in dens["levels"]:
            t = r["ttfa_ms"]
            lines.append(
                f"| {r['live']} ({r['level']}) | {t['p50']} / {t['p95']} "
                f"| {r['probe_ms']} ({r['idle_probe_ms']}) "
                f"| {r['server_cores']} | {r.get('caller_cores', '')} | {r['cpu_ms_per_session_s']} "
                f"| {r['rss_kib_per_session']} | {'yes' if r['pass'] else 'no'} |"
            )
        lines.append("")
    soak = out.get("soak")
    if soak:
        lines += [
            "| wave | sessions (faulted) | TTFA p50 / p95 / p99 ms | lost | errors | RSS MiB | gates |",
            "|---|---|---|---|---|---|---|",
        ]
        for w in soak["waves"]:
            t = w["ttfa_ms"]
            gates = "pass" if w["gates_passed"] else "FAIL: " + ", ".join(w["gates_failed"])
            if w["wave"] == 1:
                gates = "baseline"
            lines.append(
                f"| {w['wave']} | {w['sessions']} ({w['faulted']}) | {t['p50']} / {t['p95']} / {t['p99']} "
                f"| {w['lost']} | {w['errors']} | {w['snapshot']['rss_kib'] / 1024:.1f} | {gates} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":  # python -m benchmarks.soakplot DETAILS.json
    import json
    import sys

    print(tables(json.loads(Path(sys.argv[1]).read_text())))
