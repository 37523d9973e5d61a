"""``chains run FILE --input PATH [--output PATH]``: one session from a file.

The input is read according to the chain's input type: a ``.wav`` becomes 20 ms
``AudioFrame``s, a ``.json`` is decoded into the declared type, any other file is
text (a ``Text`` value, or one item per line for a stream input). Outputs print as
they arrive, and a chat's tool calls and their results one line each (what the
model asked for and what it got back explain its answer); audio outputs are
written to ``--output`` as a wav file; per-stage figures print at the end: the
time from the input to the first and to the last output as measured here, and the runtime's teardown apart.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import msgspec

from chains.audio import read_wav_frames, write_wav_frames
from chains.errors import ChainError
from chains.messages import (
    AudioFrame,
    Embedding,
    Entities,
    ErrorEvent,
    Text,
    TextDelta,
    ToolCall,
    ToolResult,
    Utterance,
)
from chains.node import Chain

_clock = time.monotonic  # what run_file times with (a test steps a fake one)


def read_input(chain: Chain, path: Path) -> Any:
    inputs = chain.graph.inputs
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs)
        raise ChainError(f"--input feeds one chain input, but {chain.name} has {len(inputs)} ({names})")
    if not path.exists():
        raise ChainError(f"--input: no such file: {path}")
    inp = inputs[0]
    t = inp.type
    if path.suffix.lower() == ".wav":
        frames = read_wav_frames(path)
        return (
            frames
            if inp.stream
            else AudioFrame(pcm=b"".join(f.pcm for f in frames), sample_rate=frames[0].sample_rate)
        )
    raw = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            return msgspec.json.decode(raw.encode(), type=list[t] if inp.stream else t)
        except msgspec.ValidationError as e:
            raise ChainError(f"--input {path}: {e}") from e
    if inp.stream:
        lines = [line for line in raw.splitlines() if line.strip()]
        return [Text(text=line) for line in lines] if t in (Text, Any) else lines
    return Text(text=raw.strip()) if t in (Text, Any) else raw


def describe(value: Any) -> str:
    if isinstance(value, Text | TextDelta):
        return value.text
    if isinstance(value, Entities):
        return ", ".join(f"{e.text} ({e.label})" for e in value.entities) or "(no entities)"
    if isinstance(value, Embedding):
        return f"embedding dim={value.dim} [{', '.join(f'{v:.3f}' for v in value.vector[:4])}, ...]"
    if isinstance(value, Utterance):
        return f"utterance {value.duration_ms:.0f} ms"
    try:
        return msgspec.json.encode(value).decode()
    except TypeError:
        return repr(value)


def describe_tool(ev: ToolCall | ToolResult) -> str:
    """One line for a tool call or its result."""
    if isinstance(ev, ToolCall):
        return f"tool call {ev.id}: {ev.name}({msgspec.json.encode(ev.args).decode()})"
    if ev.error is not None:
        return f"tool error {ev.id}: {ev.name} ({ev.code or 'tool_error'}): {ev.error}"
    return f"tool result {ev.id}: {ev.name} -> {describe(ev.result)} ({ev.elapsed_ms:.0f} ms)"


async def run_file(
    chain: Chain,
    input_path: Path,
    output_path: Path | None,
    out: Any = sys.stdout,
    err: Any = None,
) -> int:
    """Run one session on ``input_path``; the user's lines go to ``out``, node errors
    to ``err`` (stderr by default). Exit status 1 when any item failed."""
    from runtime.engine import Runtime

    value = read_input(chain, input_path)
    audio: list[AudioFrame] = []
    failures = 0
    t_start = _clock()
    streaming_text: str | None = None
    t_first: float | None = None
    t_last: float | None = None
    async with Runtime(chain) as rt:
        t_loaded = _clock()
        print(f"[{chain.name}] loaded in {t_loaded - t_start:.1f} s", file=out)
        async for o in rt.stream(value):
            if o.is_error:
                ev: ErrorEvent = o.value
                failures += 1
                print(f"\nerror in node {ev.node!r} ({ev.code}): {ev.message}", file=err or sys.stderr)
                continue
            if isinstance(o.value, ToolCall | ToolResult):
                if streaming_text is not None:
                    print(file=out)
                    streaming_text = None
                print(describe_tool(o.value), file=out, flush=True)
                continue
            if o.is_event or o.is_interim:
                continue  # control events; words heard so far (the final transcript follows)
            t_last = _clock()
            if t_first is None:
                t_first = t_last
            if isinstance(o.value, AudioFrame):
                audio.append(o.value)
                continue
            if isinstance(o.value, TextDelta):
                if streaming_text != o.name:
                    print(f"\n{o.name}: ", end="", file=out)
                    streaming_text = o.name
                print(o.value.text, end="", flush=True, file=out)
                continue
            if streaming_text is not None:
                print(file=out)
                streaming_text = None
            print(f"{o.name}: {describe(o.value)}", file=out, flush=True)
        if streaming_text is not None:
            print(file=out)
        snap = rt.metrics.snapshot()
        t_closing = _clock()
    t_closed = _clock()
    if audio:
        if output_path is None:
            print(f"(reply audio: {len(audio)} frames; pass --output reply.wav to keep it)", file=out)
        else:
            secs = write_wav_frames(output_path, audio)
            print(f"wrote {output_path} ({secs:.1f} s of audio)", file=out)
    timing = SessionTiming(
        first_output_s=None if t_first is None else t_first - t_loaded,
        last_output_s=None if t_last is None else t_last - t_loaded,
        teardown_s=t_closed - t_closing,
    )
    print_figures(snap, timing, out)
    return 1 if failures else 0


class SessionTiming(NamedTuple):
    """What the user waited for, measured here, not read off a histogram: from the
    input going in to the first and to the last output (None: no output), and apart
    from it the runtime's teardown (models released), which no output waits for."""

    first_output_s: float | None
    last_output_s: float | None
    teardown_s: float


def print_figures(snap: dict[str, Any], timing: SessionTiming, out: Any) -> None:
    if timing.last_output_s is None:
        head = "session: no output"
    else:
        head = (
            f"session: input to last output {timing.last_output_s * 1000:.0f} ms; "
            f"first output after {_ms(timing.first_output_s)} ms"
        )
    print(f"\n{head} (then {timing.teardown_s * 1000:.0f} ms to close the runtime)", file=out)
    print(f"{'stage':<18}{'items':>7}{'service p50 ms':>16}{'queue p50 ms':>14}{'batch mean':>12}", file=out)
    for name, st in snap["stages"].items():
        svc = st["service_ms"]["p50"]
        q = st["queue_wait_ms"]["p50"]
        b = st["batch_size"]["mean"]
        print(
            f"{name:<18}{st['items']:>7}{_f(svc):>16}{_f(q):>14}{_f(b):>12}",
            file=out,
        )


def _ms(s: float | None) -> str:
    return "-" if s is None else f"{s * 1000:.0f}"


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"  # None: nothing measured
