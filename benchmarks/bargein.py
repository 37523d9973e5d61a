"""Barge-in on the real voice chain, per client protocol: how far ahead of playback the
reply audio goes out, how fast it stops at an interrupt, and how well the server knows
which words were heard.

demos/voice.py's chain is served in-process by the real server (Starlette + uvicorn,
the offline models). For each protocol, ``--trials`` times: a client asks
question.wav, plays the reply at real time (a playback-buffer model: each audio
chunk starts when the previous one ends, or when it arrives), and interrupts it at a
random point between 0.3 and 1.8 s of played audio:

- ``chains`` (our protocol): the client sends ``interrupt`` and stops playing; the
  server estimates the played position (sent - lead);
- ``realtime`` (the ``openai`` SDK's client): it sends ``conversation.item.truncate``
  with the ms it played, as Realtime clients do;
- ``twilio`` (a Twilio-like caller: μ-law, marks echoed when the audio before them has
  played, ``clear`` honoured): the caller talks over the reply (question.wav again),
  the chain's VAD interrupts, and the server knows the played position from the last
  echoed mark; the caller plays until the ``clear`` arrives.

Figures: ``lead_ms_p95``: the client's buffered-but-unplayed audio right after each
audio chunk arrives (p95); ``stop_ms_p95``: server side, from the interrupt to the
end of the last send of the old turn (p95); ``heard_word_error``: per interrupted
reply, how many words the server's heard text differs from the words actually played
by the client, both by Piper's per-word timing of that reply (mean; ``max`` too).

    python benchmarks/bargein.py --json benchmarks/results/bargein.json [--plot ...] [--trials 6]
"""

from __future__ import annotations

import base64
import importlib
import importlib.util
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# the script's own folder first on sys.path would let benchmarks/http.py shadow the stdlib's http
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "benchmarks"]
sys.path.insert(0, str(ROOT))

from benchmarks._common import machine, parser, percentile, pyplot, save_figure, write_json  # noqa: E402
from chains.audio import read_wav  # noqa: E402
from nodes.audio import float_to_pcm, resample  # noqa: E402
from runtime.heard import word_error  # noqa: E402
from transport import pacing  # noqa: E402
from transport.g711 import pcm16_to_ulaw  # noqa: E402

QUESTION = ROOT / "demos" / "assets" / "question.wav"


class Player:
    """A client's playback buffer: chunks play back to back at real time."""

    def __init__(self) -> None:
        self.t_first: float | None = None
        self.play_end = 0.0
        self.received_ms = 0.0
        self.leads: list[float] = []
        self.log: list[tuple[float, float, float]] = []  # (time, received ms, play_end)
        self.stopped_at: float | None = None

    def reset(self) -> None:
        leads = self.leads
        self.__init__()  # type: ignore[misc]
        self.leads = leads

    def got(self, ms: float) -> None:
        now = time.monotonic()
        if self.stopped_at is not None:
            return
        if self.t_first is None:
            self.t_first = now
        self.play_end = max(self.play_end, now) + ms / 1000.0
        self.received_ms += ms
        self.leads.append(1000.0 * (self.play_end - now))
        self.log.append((now, self.received_ms, self.play_end))

    def played(self, t: float | None = None) -> float:
        t = time.monotonic() if t is None else t
        before = [x for x in self.log if x[0] <= t]
        if not before:
            return 0.0
        _, recv, end = before[-1]
        return recv - 1000.0 * max(0.0, end - t)

    def stop(self) -> float:
        self.stopped_at = time.monotonic()
        return self.played(self.stopped_at)


def audio_at(rate: int, silence_s: float = 1.5) -> bytes:
    pcm, r = read_wav(QUESTION)
    x = np.frombuffer(pcm, "<i2").astype(np.float32) / 32768.0
    x = np.concatenate([np.zeros(r // 4, np.float32), x, np.zeros(int(silence_s * r), np.float32)])
    return float_to_pcm(resample(x, r, rate) if rate != r else x)


def load_voice() -> Any:
    """demos/voice.py's chain (``BARGEIN_CHAIN=module:attr`` another, e.g. the test fakes
    ``tests.voice_fakes:fake_voice`` for a smoke run of this script itself)."""
    other = os.environ.get("BARGEIN_CHAIN")
    if other:
        mod, _, attr = other.partition(":")
        return getattr(importlib.import_module(mod), attr)
    spec = importlib.util.spec_from_file_location("bench_voice", ROOT / "demos" / "voice.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.voice


def cut_since(n: int) -> pacing.Playback | None:
    cuts = [p for p in list(pacing.RECENT)[n:] if p.interrupted]
    return cuts[-1] if cuts else None


def trial_result(player: Player, pb: pacing.Playback | None, truth_ms: float) -> dict[str, Any] | None:
    if pb is None or pb.track is None:
        return None
    truth = pb.track.heard(truth_ms)
    return {
        "played_truth_ms": round(truth_ms, 1),
        "played_server_ms": pb.played_ms,
        "sent_ms": pb.sent_ms,
        "heard": pb.heard,
        "truth": truth,
        "word_error": word_error(pb.heard, truth),
        "leads": player.leads,
    }


async def wait_played(player: Player, target_ms: float, more: Any) -> bool:
    """Receive (``more``) until the client has played ``target_ms``; False when the
    reply ended first (no audio for 1.5 s)."""
    last = time.monotonic()
    while player.played() < target_ms:
        got = False
        with anyio.move_on_after(0.02):
            got = await more()
        if got:
            last = time.monotonic()
        elif time.monotonic() - last > 1.5 and player.t_first is not None:
            return False
    return True


async def mic(send: Any, audio: bytes, chunk: int) -> None:
    """A microphone that never stops: ``audio``, then silence, in 40 ms chunks at
    real-time pace (the VAD needs the silence after the question to end the turn)."""
    t0 = time.monotonic()
    chunks = [audio[i : i + chunk] for i in range(0, len(audio), chunk)]
    i = 0
    while True:
        await send(chunks[i] if i < len(chunks) else b"\x00" * chunk)
        i += 1
        await anyio.sleep(max(0.0, t0 + 0.04 * i - time.monotonic()))


async def chains_trial(url: str, target_ms: float) -> dict[str, Any] | None:
    from websockets.asyncio.client import connect

    async with connect(url, max_size=None, compression=None) as ws, anyio.create_task_group() as tg:
        await ws.send(json.dumps({"type": "start", "sample_rate": 24000}))
        await ws.recv()
        tg.start_soon(mic, ws.send, audio_at(24000, silence_s=0.0), 1920)
        result = await _chains_turn(ws, target_ms)
        tg.cancel_scope.cancel()
    return result


async def _chains_turn(ws: Any, target_ms: float) -> dict[str, Any] | None:
    player = Player()

    late: list[float] = []  # when old-turn audio still arrived after the interrupt

    async def more() -> bool:
        msg = await ws.recv()
        if isinstance(msg, bytes):
            if player.stopped_at is not None:
                late.append(time.monotonic())
            player.got(len(msg) / 48.0)
            return True
        return isinstance(msg, str) and '"truncated"' in msg

    n = len(pacing.RECENT)
    if not await wait_played(player, target_ms, more):
        return None
    await ws.send(json.dumps({"type": "interrupt"}))
    truth = player.stop()
    with anyio.move_on_after(5):
        while not await more():  # until the `truncated` event: old audio, if any, came before it
            pass
    res = trial_result(player, cut_since(n), truth)
    if res is not None:
        assert player.stopped_at is not None
        res["stop_client_ms"] = round(1000.0 * (late[-1] - player.stopped_at), 2) if late else 0.0
    return res


async def realtime_trial(port: int, target_ms: float, chain: str) -> dict[str, Any] | None:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
    async with client.realtime.connect(model=chain, max_retries=0) as conn, anyio.create_task_group() as tg:
        await conn.recv()

        async def append(chunk: bytes) -> None:
            await conn.input_audio_buffer.append(audio=base64.b64encode(chunk).decode())

        tg.start_soon(mic, append, audio_at(24000, silence_s=0.0), 1920)
        result = await _realtime_turn(conn, target_ms)
        tg.cancel_scope.cancel()
    return result


async def _realtime_turn(conn: Any, target_ms: float) -> dict[str, Any] | None:
    player = Player()
    item: dict[str, str] = {}

    async def more() -> bool:
        ev = await conn.recv()
        if ev.type == "response.output_audio.delta":
            item["id"] = ev.item_id
            player.got(len(base64.b64decode(ev.delta)) / 48.0)
            return True
        return False

    n = len(pacing.RECENT)
    if not await wait_played(player, target_ms, more):
        return None
    truth = player.stop()
    await conn.conversation.item.truncate(item_id=item["id"], content_index=0, audio_end_ms=int(truth))
    with anyio.move_on_after(5):
        while True:
            ev = await conn.recv()
            if ev.type == "conversation.item.truncated":
                break
    pb = cut_since(n)
    if pb is None or pb.track is None:
        return None
    # the server's heard text is the item's: cut at the client's own position
    res = trial_result(player, pb, truth)
    assert res is not None
    res["heard"] = pb.track.heard(min(float(int(truth)), pb.sent_ms))
    res["word_error"] = word_error(res["heard"], res["truth"])
    return res


async def twilio_trial(port: int, target_ms: float) -> dict[str, Any] | None:
    from websockets.asyncio.client import connect

    player = Player()
    ulaw_q = pcm16_to_ulaw(audio_at(8000, silence_s=0.0))
    quiet = pcm16_to_ulaw(b"\x00\x00" * 160)
    sid = "MZbench"
    barge = {"at": None}
    marks: list[tuple[float, str]] = []  # (echo time, name)
    async with connect(f"ws://127.0.0.1:{port}/twilio", max_size=None, compression=None) as ws:

        async def put(ev: dict[str, Any]) -> None:
            await ws.send(json.dumps({**ev, "streamSid": sid}))

        await put({"event": "connected", "protocol": "Call"})
        await put(
            {
                "event": "start",
                "start": {
                    "streamSid": sid,
                    "customParameters": {},
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                },
            }
        )

        async def mic() -> None:
            t0 = time.monotonic()
            i = 0
            sent_barge = False
            queue = [ulaw_q[j : j + 160] for j in range(0, len(ulaw_q), 160)]
            while True:
                if barge["at"] is not None and not sent_barge:
                    sent_barge = True
                    queue = [ulaw_q[j : j + 160] for j in range(0, len(ulaw_q), 160)]
                chunk = queue.pop(0) if queue else quiet
                await put({"event": "media", "media": {"payload": base64.b64encode(chunk).decode()}})
                i += 1
                await anyio.sleep(max(0.0, t0 + i * 0.02 - time.monotonic()))

        async def echoes() -> None:
            while True:
                now = time.monotonic()
                due = [m for m in marks if m[0] <= now]
                for m in due:
                    marks.remove(m)
                    await put({"event": "mark", "mark": {"name": m[1]}})
                await anyio.sleep(0.005)

        cleared: dict[str, float] = {}

        async def more() -> bool:
            msg = json.loads(await ws.recv())
            if msg["event"] == "media":
                player.got(len(base64.b64decode(msg["media"]["payload"])) / 8.0)
                return True
            if msg["event"] == "mark":
                marks.append((player.play_end, msg["mark"]["name"]))
            elif msg["event"] == "clear":
                cleared["at"] = now = time.monotonic()
                if barge["at"] is None:  # another turn's clear: the next reply starts afresh
                    player.reset()
                player.play_end = now  # Twilio drops what it still buffers
                player.log.append((now, player.received_ms, now))
                for m in list(marks):
                    marks.remove(m)
                    await put({"event": "mark", "mark": {"name": m[1]}})
            return False

        n = len(pacing.RECENT)
        result = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(mic)
            tg.start_soon(echoes)
            if await wait_played(player, target_ms, more):
                cleared.clear()  # (a clear before this was another turn's)
                n = len(pacing.RECENT)
                barge["at"] = time.monotonic()
                with anyio.move_on_after(10):
                    while "at" not in cleared:
                        await more()
                if "at" in cleared:
                    truth = player.played(cleared["at"])
                    result = trial_result(player, cut_since(n), truth)
            tg.cancel_scope.cancel()
        return result


async def run(trials: int, seed: int) -> dict[str, Any]:
    from transport.server import serve

    rng = random.Random(seed)
    voice = load_voice()
    out: dict[str, Any] = {}
    async with serve(voice, port=0) as srv:
        for name in ("chains", "realtime", "twilio"):
            rows: list[dict[str, Any]] = []
            skipped = 0
            stops_from = len(pacing.RECENT_STOPS)
            for _ in range(trials):
                target = rng.uniform(300, 1800)
                with anyio.fail_after(240):
                    if name == "chains":
                        r = await chains_trial(srv.url, target)
                    elif name == "realtime":
                        r = await realtime_trial(srv.port, target, voice.name)
                    else:
                        r = await twilio_trial(srv.port, target)
                if r is None:
                    skipped += 1
                else:
                    r["target_ms"] = round(target, 1)
                    rows.append(r)
                    print(
                        name,
                        f"target {target:.0f} ms, heard {r['heard']!r}, truth {r['truth']!r}",
                        flush=True,
                    )
            stops = list(pacing.RECENT_STOPS)[stops_from:]
            leads = [x for r in rows for x in r.pop("leads")]
            errs = [r["word_error"] for r in rows]
            client_stops = [r["stop_client_ms"] for r in rows if "stop_client_ms" in r]
            out[name] = {
                "stop_client_ms_p95": round(percentile(client_stops, 0.95), 2) if client_stops else None,
                "lead_ms_p95": round(percentile(leads, 0.95), 1) if leads else None,
                "lead_ms_max": round(max(leads), 1) if leads else None,
                "stop_ms_p95": round(percentile(stops, 0.95), 2) if stops else None,
                "heard_word_error": round(sum(errs) / len(errs), 3) if errs else None,
                "heard_word_error_max": max(errs) if errs else None,
                "interrupted": len(rows),
                "skipped": skipped,
                "leads": leads,
                "stops": stops,
                "trials": rows,
            }
    return out


def plot(protocols: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4))
    names = list(protocols)
    ax.boxplot([protocols[n]["leads"] or [0] for n in names], tick_labels=names)
    ax.axhline(250, color="r", ls="--", lw=1, label="target p95 ≤ 250 ms")
    ax.set_ylabel("audio ahead of playback (ms)")
    ax.legend()
    bx.bar(names, [protocols[n]["heard_word_error"] or 0 for n in names])
    bx.axhline(1, color="r", ls="--", lw=1, label="target ≤ 1 word")
    bx.set_ylabel("heard text vs played (words, mean)")
    bx.legend()
    save_figure(fig, path)


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=6, help="interrupted replies per protocol")
    p.add_argument("--seed", type=int, default=17)
    args = p.parse_args()
    trials = 2 if args.quick else args.trials
    protocols = anyio.run(run, trials, args.seed)
    leads = [x for v in protocols.values() for x in v["leads"]]
    stops = [x for v in protocols.values() for x in v["stops"]]
    errs = [r["word_error"] for v in protocols.values() for r in v["trials"]]
    result = {
        "lead_ms_p95": round(percentile(leads, 0.95), 1) if leads else None,
        "stop_ms_p95": round(percentile(stops, 0.95), 2) if stops else None,
        "heard_word_error": round(sum(errs) / len(errs), 3) if errs else None,
        "protocols": protocols,
        "targets": {"lead_ms_p95": 250, "stop_ms_p95": 50, "heard_word_error": 1},
        "machine": machine(),
    }
    print(json.dumps({k: result[k] for k in ("lead_ms_p95", "stop_ms_p95", "heard_word_error")}))
    write_json(args.json, result)
    if args.plot:
        plot(protocols, args.plot)


if __name__ == "__main__":  # vLLM's workers re-import the launching script
    main()
