"""Voice-to-voice latency of the real voice chain, with and without each turn-taking
technique, at N = 1 and 4 concurrent sessions.

Each session streams a wav in 20 ms frames at real-time pace (then 1.2 s of
silence) into one shared runtime of demos/voice.py's chain (in-process: VAD ->
Whisper -> vLLM -> speech chunks -> Piper on the offline models). The techniques
are switched between runs on the same loaded models, so every figure of one run
comes from the same machine state:

- ``baseline``: no speculation, no interim transcripts, fixed 500 ms end of turn,
  the first TTS chunk a whole sentence (the chain as it was);
- ``clause``: + the reply's first clause spoken on its own;
- ``speculative``: + speculative end of turn at 160 ms of silence (confirmed at the
  same 500 ms);
- ``spec+clause``: both;
- ``all``: + interim transcripts every 600 ms of speech and the adaptive end of
  turn (300-1000 ms).

Per session, as the client sees it: the end of the user's speech (from the wav),
the end of turn (the VAD's decision, or the confirmation of the speculative turn),
the final transcript, the first reply token, the first reply audio. Reported per
run, p50/p95: ``v2v`` (speech end -> first reply audio) and the breakdown. Two
wavs: ``question`` (demos/assets/question.wav, "What is the capital of France?")
and ``pause`` (Piper saying "What is the capital of", 300 ms of silence, then
"France?"): with speculation its first pause starts a speculative turn that the
rest of the question must abandon; ``abandoned_replies_sent`` counts reply outputs
of abandoned turns that reached the client (must be 0) and ``transcripts`` shows
what was answered. And ``mixed`` for N=4: session i asks its own question
(question.wav, then three in Piper's voice), since four callers do not say the
same thing; four identical clips are a case of their own for Whisper (see
nodes/whisper.py), which ``4:spec+clause:question`` measures.

``VOICE_BENCH_VLLM_QUIET_MS=20`` shortens vLLM's 1 s busy wait to 20 ms in its
engine and worker (nodes/spin.py), an experiment: at 0 ms generation stalled for
seconds (lost wake-ups), so it is not on by default.

    python benchmarks/voice.py [--json out/voice.json] [--plot out/voice.png] [--quick]
    python benchmarks/voice.py --only 4:all:question,1:baseline:pause   # N:config:wav
"""

from __future__ import annotations

import asyncio
import os
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

from nodes.spin import quiet_vllm_in_children  # noqa: E402

if os.environ.get("VOICE_BENCH_VLLM_QUIET_MS"):  # an experiment: see nodes/spin.py (not the default)
    quiet_vllm_in_children(__name__, float(os.environ["VOICE_BENCH_VLLM_QUIET_MS"]) / 1000)

import chains  # noqa: E402
from benchmarks._common import machine, parser, percentile, pyplot, save_figure, write_json  # noqa: E402
from chains import AudioFrame, ConfirmTurn, Interrupt, SpeculativeTurn, Stream, Text, TextDelta  # noqa: E402
from nodes import PiperTTS, SileroVAD, VLLMChat, WhisperSTT  # noqa: E402
from nodes.audio import float_to_pcm  # noqa: E402
from nodes.sentences import chunk_reply  # noqa: E402
from nodes.turn import ABANDONED, TurnTiming, transcripts  # noqa: E402

QUESTION = ROOT / "demos" / "assets" / "question.wav"
RATE = 16000
TAIL_S = 1.2  # silence streamed after the wav: room for the longest end of turn

CONFIGS: dict[str, dict[str, Any]] = {
    "baseline": {"speculative": False, "clause": False, "interim": 0, "adaptive": False},
    "clause": {"speculative": False, "clause": True, "interim": 0, "adaptive": False},
    "speculative": {"speculative": True, "clause": False, "interim": 0, "adaptive": False},
    "spec+clause": {"speculative": True, "clause": True, "interim": 0, "adaptive": False},
    "all": {"speculative": True, "clause": True, "interim": 600, "adaptive": True},
    # the same, and an idle Whisper stage waits up to 40 ms for turns that end together
    "spec+clause+sttwait": {
        "speculative": True,
        "clause": True,
        "interim": 0,
        "adaptive": False,
        "stt_wait_ms": 40,
    },
}
FLAGS = {"clause": False}  # read by the chunker node of each session


@chains.node
async def chunks(deltas: Stream[TextDelta]) -> AsyncIterator[Text]:
    """speech_chunks or sentences, as the run in progress wants."""
    async for t in chunk_reply(deltas, clause_first=FLAGS["clause"]):
        yield t


@chains.chain(budget_ms=8000)
def voice_probe(audio: Stream[AudioFrame]):
    """demos/voice.py's chain, its techniques switchable between runs."""
    vad = SileroVAD(speculative=True, first_silence_ms=160, min_silence_ms=500, marks=True)
    heard = WhisperSTT(model="tiny.en")(vad(audio))
    reply = VLLMChat(system="You are a helpful voice assistant. Answer in one or two short sentences.")(
        transcripts(heard)
    )
    return {"transcript": heard, "reply": reply, "audio": PiperTTS()(chunks(reply))}


def instance(rt: Any, cls: str) -> Any:
    (inst,) = {
        id(i): i for st in rt.stages for i in st.replicas.instances if type(i).__name__ == cls
    }.values()
    return inst


def configure(rt: Any, cfg: dict[str, Any]) -> None:
    tt = instance(rt, "SileroVAD").turning
    tt.speculative = cfg["speculative"]
    tt.interim = int(cfg["interim"] * RATE / 1000)
    tt.adaptive = cfg["adaptive"]
    FLAGS["clause"] = cfg["clause"]
    for st in rt.stages:  # Batch(idle_wait_ms=) of the Whisper stage, per run
        if st.batcher is not None and type(st.replicas.instances[0]).__name__ == "WhisperSTT":
            st.batcher.idle_wait_s = cfg.get("stt_wait_ms", 0) / 1000.0


def speech_end_s(x: np.ndarray) -> float:
    loud = np.nonzero(np.abs(x) > 0.02)[0]
    return (loud[-1] + 1) / RATE


def load_question() -> np.ndarray:
    with wave.open(str(QUESTION), "rb") as w:
        assert w.getframerate() == RATE
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768.0


def pause_question(rt: Any) -> np.ndarray:
    """Piper (the chain's own instance) saying the question with a 300 ms pause."""
    tts = instance(rt, "PiperTTS")
    a, b = tts.synthesize("What is the capital of", RATE), tts.synthesize("France?", RATE)

    def trim(x: np.ndarray) -> np.ndarray:
        loud = np.nonzero(np.abs(x) > 0.02)[0]
        return x[loud[0] : loud[-1] + 1]

    z = np.zeros
    return np.concatenate([z(int(0.25 * RATE)), trim(a), z(int(0.3 * RATE)), trim(b), z(RATE)]).astype(
        np.float32
    )


OTHER_QUESTIONS = ["How many legs does a spider have?", "Who wrote Romeo and Juliet?", "Is the sun a star?"]


def other_questions(rt: Any) -> list[np.ndarray]:
    """Three more questions in Piper's voice, for sessions that each ask their own."""
    tts = instance(rt, "PiperTTS")
    z = np.zeros
    return [np.concatenate([z(int(0.25 * RATE)), tts.synthesize(q, RATE), z(RATE)]) for q in OTHER_QUESTIONS]


def frames_of(x: np.ndarray) -> list[bytes]:
    pcm = float_to_pcm(np.concatenate([x, np.zeros(int(TAIL_S * RATE), np.float32)]))
    step = RATE // 50 * 2
    return [pcm[i : i + step] for i in range(0, len(pcm), step)]


async def one_session(rt: Any, frames: list[bytes], speech_end: float) -> dict[str, Any]:
    marks: dict[str, Any] = {"interim": 0, "abandoned_sent": 0}
    abandoned: set[int] = set()
    async with rt.session() as s:

        async def feed() -> None:
            t0 = time.monotonic()
            marks["speech_end"] = t0 + speech_end
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
                        marks["eot"] = now
                    elif isinstance(v, Interrupt) and v.reason == ABANDONED:
                        abandoned.add(out.epoch - 1)  # the event carries the new turn's epoch
                    elif isinstance(v, SpeculativeTurn):
                        marks["speculated"] = marks.get("speculated", 0) + 1
                    continue
                if out.epoch in abandoned and out.name in ("reply", "audio", "transcript"):
                    marks["abandoned_sent"] += 1
                if out.name == "transcript":
                    if isinstance(v, TextDelta) and not v.final:
                        marks["interim"] += 1
                        marks.setdefault("first_interim", now)
                    else:
                        marks.setdefault("transcript", now)
                        marks["text"] = v.text
                elif out.name == "reply":
                    marks.setdefault("token", now)
                    marks["reply"] = marks.get("reply", "") + v.text
                elif out.name == "audio":
                    marks.setdefault("audio", now)
    return marks


def summarise(sessions: list[dict[str, Any]]) -> dict[str, Any]:
    def span(b: str) -> list[float]:
        return [1000 * (r[b] - r["speech_end"]) for r in sessions if b in r]

    v2v = span("audio")
    out: dict[str, Any] = {
        "v2v_p50_ms": percentile(v2v, 0.5),
        "v2v_p95_ms": percentile(v2v, 0.95),
        "sessions": len(sessions),
        "answered": len(v2v),
        "abandoned_replies_sent": sum(r["abandoned_sent"] for r in sessions),
        "interim_transcripts_per_session": float(np.mean([r["interim"] for r in sessions])),
        "speculative_turns_per_session": float(np.mean([r.get("speculated", 0) for r in sessions])),
        "transcripts": sorted({str(r.get("text", "")) for r in sessions}),
        "replies": sorted({str(r.get("reply", ""))[:80] for r in sessions}),
    }
    for k in ("eot", "transcript", "token", "audio"):
        vals = span(k)
        out[f"{k}_p50_ms"] = percentile(vals, 0.5)
    return out


async def main_async(plan: list[tuple[int, str, str]], repeats: int) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    t = time.monotonic()
    async with chains.Runtime(voice_probe, register_metrics=False) as rt:
        print(f"models loaded in {time.monotonic() - t:.1f} s", flush=True)
        wavs = {"question": load_question(), "pause": pause_question(rt)}
        prepared = {k: (frames_of(x), speech_end_s(x)) for k, x in wavs.items()}
        # "mixed": session i asks question i (question.wav, then three others)
        mixed = [prepared["question"]] + [(frames_of(x), speech_end_s(x)) for x in other_questions(rt)]
        configure(rt, CONFIGS["baseline"])
        await one_session(rt, *prepared["question"])  # warm-up (first vLLM step compiles)
        for n, name, wav in plan:
            cfg = CONFIGS[name]
            configure(rt, cfg)
            stt = instance(rt, "WhisperSTT")
            for st in rt.stages:  # fresh stage figures per run
                st.metrics = type(st.metrics)(st.metrics.chain, st.metrics.node)
            sessions: list[dict[str, Any]] = []
            for _ in range(repeats):
                inputs = [mixed[i % len(mixed)] if wav == "mixed" else prepared[wav] for i in range(n)]
                got = await asyncio.gather(*(one_session(rt, *x) for x in inputs))
                sessions.extend(got)
            res = {"n": n, "config": name, "wav": wav, **cfg, **summarise(sessions)}
            res["stt_strategy"] = stt.strategy
            figures = {st.name: st.metrics.snapshot() for st in rt.stages}
            whisper = figures["WhisperSTT"]
            res["stt_batch_ms_p50"] = whisper["service_ms"]["p50"]
            res["stt_batch_size_mean"] = whisper["batch_size"]["mean"]
            res["stt_batches"] = whisper["batch_size"]["count"]
            res["llm_first_token_ms_p50"] = figures["VLLMChat"]["first_output_ms"]["p50"]
            res["tts_first_audio_ms_p50"] = figures["PiperTTS"]["first_output_ms"]["p50"]
            runs.append(res)
            print(
                f"N={n} {name:12s} {wav:8s}: v2v p50 {res['v2v_p50_ms']:.0f} ms p95 {res['v2v_p95_ms']:.0f}; "
                + "; ".join(f"{k} {res[f'{k}_p50_ms']:.0f}" for k in ("eot", "transcript", "token", "audio"))
                + f"; abandoned sent {res['abandoned_replies_sent']}; heard {res['transcripts']}"
                + f"; stt batch {res['stt_batch_ms_p50']:.0f} ms x{res['stt_batch_size_mean']:.1f}"
                + f" ({res['stt_batches']}); llm ttft {res['llm_first_token_ms_p50']:.0f}"
                + f"; tts first {res['tts_first_audio_ms_p50']:.0f}",
                flush=True,
            )
    return runs


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    rows = [r for r in runs if (r["n"], r["wav"]) in ((1, "question"), (4, "mixed"))]
    labels = [f"N={r['n']}\n{r['config']}" for r in rows]
    keys = ["eot", "transcript", "token", "audio"]
    fig, ax = plt.subplots(figsize=(max(7, 1.1 * len(rows)), 4.5))
    prev = np.zeros(len(rows))
    for k in keys:
        vals = np.array([r[f"{k}_p50_ms"] for r in rows])
        ax.bar(labels, np.maximum(vals - prev, 0), bottom=prev, label=f"speech end -> {k}")
        prev = np.maximum(vals, prev)
    ax.set(ylabel="ms after the end of speech (p50)", title="voice-to-voice latency by technique")
    ax.legend(fontsize=8)
    ax.tick_params(axis="x", labelsize=8)
    save_figure(fig, path)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=4, help="rounds per run")
    p.add_argument("--only", help="just these runs, e.g. 4:all:question,1:baseline:pause (N:config:wav)")
    args = p.parse_args()
    one = [(1, c, "question") for c in CONFIGS] + [
        (1, c, "pause") for c in ("baseline", "spec+clause", "all")
    ]
    if args.only:
        plan = [(int(n), c, w) for n, c, w in (r.split(":") for r in args.only.split(","))]
    elif args.quick:
        plan = [(1, c, "question") for c in ("baseline", "spec+clause", "all")] + [(1, "all", "pause")]
    else:
        plan = one + [(4, c, "mixed") for c in ("baseline", "spec+clause", "all")]
        plan += [(4, "spec+clause", "question")]
    runs = asyncio.run(main_async(plan, 2 if args.quick else args.repeats))
    write_json(args.json, {"benchmark": "voice", "machine": machine(), "runs": runs})
    if args.plot:
        plot(runs, args.plot)


if __name__ == "__main__":
    main()
