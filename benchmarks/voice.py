"""Voice-to-voice latency and turn-taking accuracy of the real voice chain, per
turn-taking configuration, at N = 1 and 4 concurrent sessions.

Each session streams one caller turn in 20 ms frames at real-time pace (then 2 s of
silence) into one shared runtime of demos/voice.py's chain (in-process: VAD ->
Whisper -> vLLM -> speech chunks -> Piper on the offline models). The configurations
are switched between runs on the same loaded models, so every figure of one run
comes from the same machine state:

- ``baseline``: no speculation, no interim transcripts, fixed 500 ms end of turn,
  the first TTS chunk a whole sentence (the chain as it was);
- ``spec+clause``: speculative end of turn at 160 ms of silence (confirmed at 500 ms)
  and the reply's first clause spoken on its own;
- ``adaptive``: + interim transcripts every 600 ms of speech and the words-based
  adaptive end of turn (300-1000 ms): the demo's rule before the end-of-turn model;
- ``default``: what demos/voice.py ships (``TURN_TAKING``): + Smart Turn v3.2 at the
  first silence and preemptive generation from interim transcripts.

The turns: question.wav ("What is the capital of France?") and the turn-taking set
(benchmarks/turnset.py: Piper in four voice variants; complete turns and incomplete
ones with a 400-1200 ms mid-sentence pause). Per run, as the client sees it:

- ``v2v_p50_ms``/``v2v_p95_ms``: the caller's last speech end -> the first reply
  audio, over the complete turns;
- ``false_cutoff_rate``: of the incomplete turns, the share whose turn was ended (a
  confirmed speculative turn, or an end-of-turn decision) before the caller's last
  word: the bot answers half a question (``false_cutoff_audible``: its reply audio
  even arrived before the caller finished); ``false_cutoff_rate_complete`` the same
  on complete turns (a pause inside "No, thank you.");
- ``late_release_p50_ms``/``p95``: on complete turns, the silence waited beyond
  200 ms before the turn was released;
- ``abandoned_replies_sent``: outputs of abandoned (speculative) turns that reached
  the client (must be 0); ``preempt_hits``/``preempt_misses``: replies started from
  an interim transcript that the final transcript confirmed / contradicted.

``CHAINS_VLLM_SPIN_MS`` sets how long vLLM's engine and worker busy-wait after each
message (nodes/spin.py: 20 ms by default, 1000 is vLLM's own), to compare the two.

    python benchmarks/voice.py [--json out/voice.json] [--plot out/voice.png] [--quick]
    python benchmarks/voice.py --only 1:default,4:baseline   # N:config
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import time
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import chains  # noqa: E402
from benchmarks._common import machine, parser, percentile, pyplot, save_figure, write_json  # noqa: E402
from benchmarks.turnset import Turn, build  # noqa: E402
from chains import AudioFrame, ConfirmTurn, Interrupt, SpeculativeTurn, Stream, Text, TextDelta  # noqa: E402
from demos.voice import TURN_TAKING  # noqa: E402
from nodes import PiperTTS, SileroVAD, VLLMChat, WhisperSTT  # noqa: E402
from nodes.audio import float_to_pcm  # noqa: E402
from nodes.sentences import chunk_reply  # noqa: E402
from nodes.turn import ABANDONED, Preempted, TurnTaking, TurnTiming, transcripts  # noqa: E402

QUESTION = ROOT / "demos" / "assets" / "question.wav"
RATE = 16000
WINDOW = 512
TAIL_S = 2.0  # silence streamed after the turn: room for the longest end of turn (1.6 s)

_OFF = {"speculative": False, "interim_ms": 0, "adaptive": False, "min_silence_ms": 500, "marks": True}
CONFIGS: dict[str, dict[str, Any]] = {
    "baseline": {"clause": False, "turn": _OFF},
    "spec+clause": {"clause": True, "turn": {**_OFF, "speculative": True, "first_silence_ms": 160}},
    "adaptive": {
        "clause": True,
        "turn": {
            **_OFF,
            "speculative": True,
            "first_silence_ms": 160,
            "interim_ms": 600,
            "adaptive": True,
            "eot_min_ms": 300,
            "eot_max_ms": 1000,
        },
    },
    "default": {"clause": True, "turn": dict(TURN_TAKING)},
    # the default with interim snapshots heard in Whisper's whole 30 s window (the finals' own)
    "default-interim30": {"clause": True, "turn": dict(TURN_TAKING), "interim_window_s": 30.0},
}
INTERIM_WINDOW_S = 15.0  # WhisperSTT's default
FLAGS = {"clause": False}  # read by the chunker node of each session


@chains.node
async def chunks(deltas: Stream[TextDelta]) -> AsyncIterator[Text]:
    """speech_chunks or sentences, as the run in progress wants."""
    async for t in chunk_reply(deltas, clause_first=FLAGS["clause"]):
        yield t


@chains.chain(budget_ms=8000)
def voice_probe(audio: Stream[AudioFrame]):
    """demos/voice.py's chain, its turn taking switchable between runs."""
    heard = WhisperSTT(model="tiny.en")(SileroVAD(**TURN_TAKING)(audio))
    reply = VLLMChat(system="You are a helpful voice assistant. Answer in one or two short sentences.")(
        transcripts(heard)
    )
    return {"transcript": heard, "reply": reply, "audio": PiperTTS()(chunks(reply))}


def configure(rt: Any, cfg: dict[str, Any]) -> None:
    """A fresh turn-taking machine with the run's options on the VAD (the sessions of
    the run start after this), sharing the loaded end-of-turn model."""
    (vad,) = rt.models("SileroVAD")
    opts = {k: v for k, v in cfg["turn"].items() if k != "turn_model"}
    model = vad.smart_turn.probability if cfg["turn"].get("turn_model") else None
    vad.turning = TurnTaking(**opts, turn_model=model, rate=RATE, window=WINDOW)
    FLAGS["clause"] = cfg["clause"]
    (stt,) = rt.models("WhisperSTT")
    window_s = cfg.get("interim_window_s", INTERIM_WINDOW_S)
    stt.interim_window = int(window_s * RATE) if 0 < window_s < 30 else 0


def f0(x: float | None) -> str:
    return "-" if x is None or x != x else f"{x:.0f}"


def speech_end_s(x: np.ndarray) -> float:
    loud = np.nonzero(np.abs(x) > 0.02)[0]
    return (loud[-1] + 1) / RATE


def load_question() -> Turn:
    with wave.open(str(QUESTION), "rb") as w:
        assert w.getframerate() == RATE
        x = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768.0
    return Turn("complete", "What is the capital of France?", "question.wav", x, speech_end_s(x))


def frames_of(x: np.ndarray, caller: int = 0) -> list[bytes]:
    """The turn's 20 ms frames, then the tail of silence. Each caller's audio carries its
    own 1-LSB dither (seeded by ``caller``): no two real calls are bit-identical, and
    WhisperSTT, which remembers the words of clips it heard lately, must not answer one
    caller from another's pass, nor one configuration from an earlier one's."""
    x = np.concatenate([x, np.zeros(int(TAIL_S * RATE), np.float32)])
    dither = np.random.default_rng(caller).integers(-1, 2, len(x)).astype(np.float32) / 32768.0
    pcm = float_to_pcm(x + dither)
    step = RATE // 50 * 2
    return [pcm[i : i + step] for i in range(0, len(pcm), step)]


CALLERS = itertools.count(1)  # each session's dither seed


async def one_session(rt: Any, turn: Turn) -> dict[str, Any]:
    frames = frames_of(turn.audio, next(CALLERS))
    marks: dict[str, Any] = {"kind": turn.kind, "interim": 0, "abandoned_sent": 0, "hits": 0, "misses": 0}
    marks.update(said=turn.text, voice=turn.voice)
    abandoned: set[int] = set()
    async with rt.session() as s:

        async def feed() -> None:
            t0 = time.monotonic()
            marks["speech_end"] = t0 + turn.speech_end_s
            for i, f in enumerate(frames):
                await anyio.sleep(max(0.0, t0 + i * 0.02 - time.monotonic()))
                await s.send(AudioFrame(pcm=f, sample_rate=RATE))
            s.close_inputs()

        async with anyio.create_task_group() as tg:
            tg.start_soon(feed)
            async for out in s:
                now = time.monotonic()
                v = out.value
                if out.name == "events":
                    if isinstance(v, ConfirmTurn) or (isinstance(v, TurnTiming) and v.end_of_turn):
                        marks.setdefault("eot", now)
                    elif isinstance(v, Interrupt) and v.reason == ABANDONED:
                        abandoned.add(out.epoch - 1)  # the event carries the new turn's epoch
                    elif isinstance(v, SpeculativeTurn):
                        marks["speculated"] = marks.get("speculated", 0) + 1
                    elif isinstance(v, Preempted):
                        marks["hits" if v.hit else "misses"] += 1
                    continue
                if out.epoch in abandoned and out.name in ("reply", "audio", "transcript"):
                    marks["abandoned_sent"] += 1
                if out.name == "transcript":
                    if isinstance(v, TextDelta) and not v.final:
                        marks["interim"] += 1
                    else:
                        marks.setdefault("transcript", now)
                        marks.setdefault("first_text", v.text)  # a cut-off turn's first half
                        marks["text"] = v.text
                elif out.name == "reply":
                    marks.setdefault("token", now)
                    marks["reply"] = marks.get("reply", "") + v.text
                elif out.name == "audio":
                    marks.setdefault("audio", now)
    return marks


def summarise(sessions: list[dict[str, Any]]) -> dict[str, Any]:
    complete = [r for r in sessions if r["kind"] == "complete"]
    incomplete = [r for r in sessions if r["kind"] == "incomplete"]

    def span(rows: list[dict[str, Any]], b: str) -> list[float]:
        return [1000 * (r[b] - r["speech_end"]) for r in rows if b in r]

    def cut(rows: list[dict[str, Any]], b: str = "eot") -> float | None:
        # ended (or audible) before the caller's last word (20 ms for frame pacing)
        return sum(b in r and r[b] < r["speech_end"] - 0.02 for r in rows) / len(rows) if rows else None

    v2v = span(complete, "audio")
    late = [max(0.0, x - 200) for x in span(complete, "eot")]
    out: dict[str, Any] = {
        "v2v_p50_ms": percentile(v2v, 0.5),
        "v2v_p95_ms": percentile(v2v, 0.95),
        "false_cutoff_rate": cut(incomplete),
        "false_cutoff_audible": cut(incomplete, "audio"),
        "false_cutoff_rate_complete": cut(complete),
        "late_release_p50_ms": percentile(late, 0.5),
        "late_release_p95_ms": percentile(late, 0.95),
        "sessions": len(sessions),
        "complete_turns": len(complete),
        "incomplete_turns": len(incomplete),
        "answered": sum("audio" in r for r in sessions),
        "abandoned_replies_sent": sum(r["abandoned_sent"] for r in sessions),
        "preempt_hits": sum(r["hits"] for r in sessions),
        "preempt_misses": sum(r["misses"] for r in sessions),
        "interim_transcripts_per_session": float(np.mean([r["interim"] for r in sessions])),
        "speculative_turns_per_session": float(np.mean([r.get("speculated", 0) for r in sessions])),
        "transcripts": sorted({str(r.get("text", "")) for r in sessions}),
        # each incomplete turn ended before the caller's last word: what was said, what
        # the turn was ended on (its first final transcript), whether its reply was heard
        "cut_turns": [
            {
                "said": r["said"],
                "voice": r["voice"],
                "heard": r.get("first_text"),
                "audible": "audio" in r and r["audio"] < r["speech_end"] - 0.02,
            }
            for r in incomplete
            if "eot" in r and r["eot"] < r["speech_end"] - 0.02
        ],
    }
    for k in ("eot", "transcript", "token", "audio"):
        out[f"{k}_p50_ms"] = percentile(span(complete, k), 0.5)
    return out


async def main_async(plan: list[tuple[int, str]], turns: list[Turn], rounds4: int) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    t = time.monotonic()
    async with chains.Runtime(voice_probe, register_metrics=False) as rt:
        print(f"models loaded in {time.monotonic() - t:.1f} s", flush=True)
        configure(rt, CONFIGS["baseline"])
        await one_session(rt, turns[0])  # warm-up (first vLLM step compiles)
        for n, name in plan:
            cfg = CONFIGS[name]
            configure(rt, cfg)
            for st in rt.stages:  # fresh stage figures per run
                st.metrics = type(st.metrics)(st.metrics.chain, st.metrics.node)
            sessions: list[dict[str, Any]] = []
            if n == 1:
                for turn in turns:
                    sessions.append(await one_session(rt, turn))
            else:  # rounds of n callers at once, each saying its own turn
                for r in range(rounds4):
                    batch = [turns[(r * n + k) % len(turns)] for k in range(n)]
                    sessions.extend(await asyncio.gather(*(one_session(rt, x) for x in batch)))
            res = {"n": n, "config": name, "clause": cfg["clause"], **cfg["turn"], **summarise(sessions)}
            figures = {st.name: st.metrics.snapshot() for st in rt.stages}
            whisper = figures["WhisperSTT"]
            res["stt_batch_ms_p50"] = whisper["service_ms"]["p50"]
            res["stt_batch_size_mean"] = whisper["batch_size"]["mean"]
            res["stt_batches"] = whisper["batch_size"]["count"]
            res["llm_first_token_ms_p50"] = figures["VLLMChat"]["first_output_ms"]["p50"]
            res["tts_first_audio_ms_p50"] = figures["PiperTTS"]["first_output_ms"]["p50"]
            runs.append(res)
            print(
                f"N={n} {name:12s}: v2v p50 {f0(res['v2v_p50_ms'])} ms p95 {f0(res['v2v_p95_ms'])}; "
                + "; ".join(f"{k} {f0(res[f'{k}_p50_ms'])}" for k in ("eot", "transcript", "token", "audio"))
                + f"; false cut-off {res['false_cutoff_rate']} (audible {res['false_cutoff_audible']},"
                + f" complete {res['false_cutoff_rate_complete']}); late release p50"
                + f" {f0(res['late_release_p50_ms'])} p95 {f0(res['late_release_p95_ms'])}"
                + f"; preempt {res['preempt_hits']}/{res['preempt_misses']}"
                + f"; abandoned sent {res['abandoned_replies_sent']}"
                + f"; answered {res['answered']}/{res['sessions']}"
                + f"; stt batch {f0(res['stt_batch_ms_p50'])} ms x{res['stt_batch_size_mean']}"
                + f" ({res['stt_batches']}); llm ttft {f0(res['llm_first_token_ms_p50'])}"
                + f"; tts first {f0(res['tts_first_audio_ms_p50'])}; heard {res['transcripts']}",
                flush=True,
            )
    return runs


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    labels = [f"N={r['n']}\n{r['config']}" for r in runs]
    keys = ["eot", "transcript", "token", "audio"]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(max(9, 1.6 * len(runs)), 4.5), width_ratios=[3, 1.4])
    prev = np.zeros(len(runs))
    for k in keys:
        vals = np.nan_to_num(np.array([r[f"{k}_p50_ms"] for r in runs], dtype=float))
        ax.bar(labels, np.maximum(vals - prev, 0), bottom=prev, label=f"speech end -> {k}")
        prev = np.maximum(vals, prev)
    ax.set(ylabel="ms after the end of speech (p50, complete turns)", title="voice to voice by configuration")
    ax.legend(fontsize=8)
    ax.tick_params(axis="x", labelsize=8)
    bx.bar(labels, [100 * (r["false_cutoff_rate"] or 0) for r in runs], color="tab:red")
    bx.axhline(5, color="k", lw=0.8, ls="--")
    bx.set(ylabel="% of incomplete turns cut off", title="false cut-offs (target 5%)")
    bx.tick_params(axis="x", labelsize=7)
    save_figure(fig, path)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--only", help="just these runs, e.g. 1:default,4:baseline (N:config)")
    p.add_argument("--limit", type=int, default=3, help="turns of each kind per voice from the set")
    args = p.parse_args()
    if args.only:
        plan = [(int(n), c) for n, c in (r.split(":") for r in args.only.split(","))]
    elif args.quick:
        plan = [(1, c) for c in ("baseline", "adaptive", "default")] + [
            (4, c) for c in ("baseline", "default")
        ]
    else:
        plan = [(1, c) for c in CONFIGS] + [(4, c) for c in ("baseline", "adaptive", "default")]
    limit = 2 if args.quick else args.limit
    voices = None
    if args.quick:
        from benchmarks.turnset import VOICES

        voices = VOICES[:2]
    turns = [load_question(), *build(voices, limit)]
    # complete and incomplete turns interleaved, so that each round of 4 mixes both
    done, cut = ([t for t in turns[1:] if t.kind == k] for k in ("complete", "incomplete"))
    turns = [turns[0]] + [t for pair in zip(done, cut, strict=True) for t in pair]
    runs = asyncio.run(main_async(plan, turns, 2 if args.quick else 4))
    base = {r["n"]: r["v2v_p50_ms"] for r in runs if r["config"] == "baseline"}
    for r in runs:
        if r["n"] in base:
            r["v2v_p50_vs_baseline"] = r["v2v_p50_ms"] / base[r["n"]]
    write_json(args.json, {"benchmark": "voice", "machine": machine(), "runs": runs})
    if args.plot:
        plot(runs, args.plot)


if __name__ == "__main__":
    main()
