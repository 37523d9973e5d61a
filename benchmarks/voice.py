"""Voice-to-voice latency of the real voice chain, N = 1, 2, 4 concurrent sessions.

Each session streams demos/assets/question.wav in 20 ms frames at real-time pace
into one shared runtime of demos/voice.py (in-process: VAD -> Whisper -> vLLM ->
sentences -> Piper on the offline models). Per session it timestamps, as the
client sees them: the end of the user's speech (from the wav), the VAD's
end-of-turn (the utterance), the transcript, the first reply token, the first
complete sentence and the first reply audio. Reported per N, p50/p95:

- vad_eot: speech end -> utterance (mostly the VAD's 500 ms end-of-turn silence)
- stt: utterance -> transcript;  llm_first_token: transcript -> first token
- first_sentence: first token -> first sentence;  tts_first_audio: sentence -> first audio
- voice_to_voice: speech end -> first reply audio (the sum of the above)
- framework: voice_to_voice minus the model times the stages measured themselves
  (VAD end-of-turn, STT batch service, LLM first token and first sentence, Piper
  first audio): what queues, hops and batching waits add.

    python benchmarks/voice.py [--json out/voice.json] [--plot out/voice.png] [--quick]
"""

from __future__ import annotations

import asyncio
import sys
import time
import wave
from pathlib import Path
from typing import Any

import anyio
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import chains  # noqa: E402
from benchmarks._common import machine, parser, percentile, pyplot, save_figure, write_json  # noqa: E402
from chains import AudioFrame, Stream  # noqa: E402
from nodes import PiperTTS, SileroVAD, VLLMChat, WhisperSTT, sentences  # noqa: E402

QUESTION = ROOT / "demos" / "assets" / "question.wav"


@chains.chain(budget_ms=6000)
def voice_probe(audio: Stream[AudioFrame]):
    """demos/voice.py's chain, with the utterances and sentences exposed for timing."""
    turns = SileroVAD()(audio)
    text = WhisperSTT(model="tiny.en")(turns)
    reply = VLLMChat(system="You are a helpful voice assistant. Answer in one short sentence.")(text)
    said = sentences(reply)
    return {"turn": turns, "transcript": text, "reply": reply, "sentence": said, "audio": PiperTTS()(said)}


def load_question() -> tuple[list[bytes], int, float]:
    with wave.open(str(QUESTION), "rb") as w:
        rate = w.getframerate()
        pcm = w.readframes(w.getnframes())
    x = np.frombuffer(pcm, dtype="<i2")
    loud = np.nonzero(np.abs(x) > 0.02 * 32768)[0]
    speech_end = (loud[-1] + 1) / rate
    step = rate // 50 * 2
    return [pcm[i : i + step] for i in range(0, len(pcm), step)], rate, speech_end


async def one_session(rt: Any, frames: list[bytes], rate: int, speech_end: float) -> dict[str, float]:
    marks: dict[str, float] = {}
    async with rt.session() as s:

        async def feed() -> None:
            t0 = time.monotonic()
            marks["speech_end"] = t0 + speech_end
            for i, f in enumerate(frames):
                await anyio.sleep(max(0.0, t0 + i * 0.02 - time.monotonic()))
                await s.send(AudioFrame(pcm=f, sample_rate=rate))
            s.close_inputs()

        async with anyio.create_task_group() as tg:
            tg.start_soon(feed)
            async for out in s:
                now = time.monotonic()
                key = {
                    "turn": "turn",
                    "transcript": "transcript",
                    "reply": "token",
                    "sentence": "sentence",
                    "audio": "audio",
                }.get(out.name)
                if key and key not in marks:
                    marks[key] = now
                if out.name == "transcript":
                    marks["text"] = out.value.text  # type: ignore[assignment]
    return marks


def summarise(runs: list[dict[str, float]], snap: dict[str, Any]) -> dict[str, Any]:
    def span(a: str, b: str) -> list[float]:
        return [1000 * (r[b] - r[a]) for r in runs if a in r and b in r]

    parts = {
        "vad_eot": span("speech_end", "turn"),
        "stt": span("turn", "transcript"),
        "llm_first_token": span("transcript", "token"),
        "first_sentence": span("token", "sentence"),
        "tts_first_audio": span("sentence", "audio"),
        "voice_to_voice": span("speech_end", "audio"),
    }
    out: dict[str, Any] = {
        k: {"p50": percentile(v, 0.5), "p95": percentile(v, 0.95), "n": len(v)} for k, v in parts.items()
    }
    st = snap["stages"]
    model_ms = (
        out["vad_eot"]["p50"]
        + st["WhisperSTT"]["service_ms"]["p50"]
        + st["VLLMChat"]["first_output_ms"]["p50"]
        + out["first_sentence"]["p50"]
        + st["PiperTTS"]["first_output_ms"]["p50"]
    )
    out["model_ms_p50"] = model_ms
    out["framework_ms_p50"] = out["voice_to_voice"]["p50"] - model_ms
    out["stt_batch_mean"] = st["WhisperSTT"]["batch_size"]["mean"]
    return out


async def main_async(ns: list[int], repeats: int) -> dict[str, Any]:
    frames, rate, speech_end = load_question()
    results: dict[str, Any] = {}
    t = time.monotonic()
    async with chains.Runtime(voice_probe, register_metrics=False) as rt:
        print(f"models loaded in {time.monotonic() - t:.1f} s", flush=True)
        await one_session(rt, frames, rate, speech_end)  # warm-up (first vLLM step compiles)
        for n in ns:
            rt.metrics = type(rt.metrics)(rt.graph.name)  # fresh figures per N
            for st in rt.stages:
                st.metrics = rt.metrics.stage(st.name)
            runs: list[dict[str, float]] = []
            for _ in range(repeats):
                got = await asyncio.gather(*(one_session(rt, frames, rate, speech_end) for _ in range(n)))
                runs.extend(got)
            res = summarise(runs, rt.metrics.snapshot())
            res["transcripts"] = sorted({str(r.get("text", "")) for r in runs})
            results[str(n)] = res
            v = res["voice_to_voice"]
            print(
                f"N={n}: voice-to-voice p50 {v['p50']:.0f} ms p95 {v['p95']:.0f} ms; "
                + "; ".join(
                    f"{k} {res[k]['p50']:.0f}"
                    for k in ("vad_eot", "stt", "llm_first_token", "first_sentence", "tts_first_audio")
                )
                + f"; framework {res['framework_ms_p50']:.0f} ms; stt batch {res['stt_batch_mean']:.1f}",
                flush=True,
            )
    return results


def plot(results: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    keys = ["vad_eot", "stt", "llm_first_token", "first_sentence", "tts_first_audio"]
    ns = list(results)
    fig, ax = plt.subplots(figsize=(7, 4))
    bottom = np.zeros(len(ns))
    for k in keys:
        vals = np.array([results[n][k]["p50"] for n in ns])
        ax.bar(ns, vals, bottom=bottom, label=k)
        bottom += vals
    ax.set(xlabel="concurrent sessions", ylabel="ms (p50)", title="voice-to-voice latency by stage")
    ax.legend()
    save_figure(fig, path)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3, help="rounds per N")
    args = p.parse_args()
    ns = [1, 2] if args.quick else [1, 2, 4]
    res = asyncio.run(main_async(ns, 1 if args.quick else args.repeats))
    write_json(args.json, {"benchmark": "voice", "machine": machine(), "runs": res})
    if args.plot:
        plot(res, args.plot)


if __name__ == "__main__":
    main()
