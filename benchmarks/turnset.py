"""The turn-taking evaluation set, and the end-of-turn thresholds measured on it.

Spoken test turns, synthesised with Piper at set-up time (nothing committed but this
script): ``COMPLETE`` turns (questions, statements, one-word answers) and
``INCOMPLETE`` ones, a sentence with a natural mid-sentence pause of 400-1200 ms
(after "and", "um", "for", a number being thought of) before it goes on. The only
Piper voice shipped in an installed package is en_US-joe-medium (single speaker),
so the four ``VOICES`` vary it: speaking rate (``length_scale``), the variability of
the delivery (``noise_scale``, ``noise_w_scale``) and the pitch (the audio resampled
as if recorded at another rate, which also shifts tempo). Each turn is the whole
audio the caller sends: 250 ms of silence, the speech (with its pause), 1.5 s of
silence.

``python benchmarks/turnset.py --json out/turnset.json`` runs Silero and the real
turn-taking state machine over every turn with Smart Turn v3.2 scored at each check
(first silence, then every 200 ms of silence), and reports, per candidate
(``turn_done``, ``turn_hold``, ``eot_max_ms``), the false cut-off rate on the
incomplete turns (the rule ends the turn inside the pause) and the late release on
the complete ones (silence waited beyond 200 ms), beside the adaptive words rule's
false cut-offs. demos/voice.py's thresholds come from this table.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from nodes.heard import trails_off  # noqa: E402

RATE = 16000
LEAD_S, TAIL_S = 0.25, 1.5

COMPLETE = [
    "What is the capital of France?",
    "How many legs does a spider have?",
    "Yes.",
    "No, thank you.",
    "I want to order a large pizza with mushrooms.",
    "My account number is four five six seven.",
    "Can you book a table for two at seven tonight?",
    "Please cancel my subscription.",
    "Sure.",
    "What time does the store close today?",
    "I would like to speak to someone about my bill.",
    "Okay, that sounds good.",
]
# (first part, second part): the caller pauses between them
INCOMPLETE = [
    ("My account number is", "four five six seven."),
    ("I want to order um", "a large pizza with mushrooms."),
    ("Can you book a table for", "two people tonight?"),
    ("What is the capital of", "France?"),
    ("I would like to cancel my subscription and", "get a refund."),
    ("The delivery address is twelve", "Oak Street."),
    ("I need a flight to", "Boston on Friday."),
    ("My phone number is five five five", "one two three four."),
    ("I was wondering if", "you could help me with my order."),
    ("Could you remind me to", "call my mother tomorrow?"),
    ("Set an alarm for", "six thirty in the morning."),
    ("The problem is that the", "internet keeps dropping."),
]
PAUSES_MS = [400, 560, 720, 880, 1040, 1200]


@dataclass(frozen=True)
class Voice:
    name: str
    length_scale: float
    noise_scale: float
    noise_w_scale: float
    pitch: float  # >1: higher (and faster), by resampling


VOICES = [
    Voice("joe", 1.0, 0.667, 0.8, 1.0),
    Voice("joe-fast-high", 0.85, 0.75, 0.9, 1.1),
    Voice("joe-slow-low", 1.25, 0.6, 0.7, 0.9),
    Voice("joe-lively", 1.05, 0.9, 1.1, 1.05),
]


@dataclass
class Turn:
    """One caller turn: the audio sent, where the caller's speech ends for good, and,
    for an incomplete one, the pause (start, end) in seconds from the audio's start."""

    kind: str  # "complete" | "incomplete"
    text: str
    voice: str
    audio: np.ndarray
    speech_end_s: float
    pause: tuple[float, float] | None = None


def trim(x: np.ndarray, level: float = 0.02) -> np.ndarray:
    loud = np.nonzero(np.abs(x) > level)[0]
    return x[loud[0] : loud[-1] + 1] if len(loud) else x[:0]


class Synth:
    """Piper (joe) at 16 kHz with a voice's settings, reproducible: VITS draws noise
    (``noise_scale``, and ``noise_w_scale`` for the durations) from ONNX Runtime's
    random ops, whose generators are seeded when the session is built, so that
    without a seed every rendition of a sentence differs (the cut of ``split`` too),
    and a test or the set would hear other audio on every run. With ``seed``, the
    same calls in the same order give the same audio on any machine."""

    def __init__(self, seed: int = 0) -> None:
        import onnxruntime
        from piper import PiperVoice

        from nodes.resolve import piper_voice_paths

        model, config = piper_voice_paths()
        onnxruntime.set_seed(seed)  # read by the random ops as the session builds them
        self.voice = PiperVoice.load(str(model), config_path=str(config))
        self.rate = int(self.voice.config.sample_rate)

    def say(self, text: str, v: Voice) -> np.ndarray:
        from piper import SynthesisConfig

        from nodes.audio import resample

        cfg = SynthesisConfig(
            length_scale=v.length_scale, noise_scale=v.noise_scale, noise_w_scale=v.noise_w_scale
        )
        chunks = [c.audio_int16_array for c in self.voice.synthesize(text, syn_config=cfg)]
        x = np.concatenate(chunks).astype(np.float32) / 32768.0
        return trim(resample(x, round(self.rate * v.pitch), RATE)).astype(np.float32)

    def split(self, a: str, b: str, v: Voice) -> tuple[np.ndarray, np.ndarray]:
        """The sentence "a b" said in one go, cut at the word boundary between ``a`` and
        ``b``: the first part keeps its mid-sentence melody (said alone, Piper would
        end it like a finished sentence). This voice gives no phoneme alignments, so
        the cut is the quietest 10 ms within 150 ms of where the parts' lengths said
        alone put it, with 5 ms fades."""
        whole, xa, xb = self.say(f"{a} {b}", v), self.say(a, v), self.say(b, v)
        guess = int(len(whole) * len(xa) / (len(xa) + len(xb)))
        hop, reach = RATE // 100, int(0.15 * RATE)
        lo, hi = max(hop, guess - reach), min(len(whole) - 2 * hop, guess + reach)
        rms = [float(np.sqrt(np.mean(whole[k : k + hop] ** 2))) for k in range(lo, hi, hop // 2)]
        cut = lo + int(np.argmin(rms)) * (hop // 2) + hop // 2
        fade = np.linspace(1.0, 0.0, RATE // 200, dtype=np.float32)
        first, second = whole[:cut].copy(), whole[cut:].copy()
        first[-len(fade) :] *= fade
        second[: len(fade)] *= fade[::-1]
        return first, second


def build(voices: list[Voice] | None = None, limit: int | None = None) -> list[Turn]:
    """The set: every complete and incomplete turn in every voice (``limit``: the first
    ``limit`` of each kind per voice)."""
    synth = Synth()
    z = lambda s: np.zeros(int(s * RATE), np.float32)  # noqa: E731
    turns: list[Turn] = []
    for vi, v in enumerate(voices or VOICES):
        for text in COMPLETE[:limit]:
            x = synth.say(text, v)
            end = LEAD_S + len(x) / RATE
            turns.append(Turn("complete", text, v.name, np.concatenate([z(LEAD_S), x, z(TAIL_S)]), end))
        for i, (a, b) in enumerate(INCOMPLETE[:limit]):
            pause = PAUSES_MS[(i + vi) % len(PAUSES_MS)] / 1000
            xa, xb = synth.split(a, b, v)
            p0 = LEAD_S + len(xa) / RATE
            audio = np.concatenate([z(LEAD_S), xa, z(pause), xb, z(TAIL_S)])
            turns.append(
                Turn(
                    "incomplete", f"{a} ... {b}", v.name, audio, p0 + pause + len(xb) / RATE, (p0, p0 + pause)
                )
            )
    return turns


# --- the thresholds, measured ---------------------------------------------------------------
CHECKS_EVERY_MS = 200


Check = tuple[float, float, float]  # (audio time in s, silence in ms, P(complete))


async def trace(turn: Turn, vad: Any, model: Any, probe_ms: float = 2000) -> tuple[list[Check], list[float]]:
    """Every check Smart Turn makes on this turn, and the audio times (s) at which the
    caller spoke again after a silence, through Silero and the real state machine, which is kept from deciding
    (each pause is scored every 200 ms until ``probe_ms`` of silence)."""
    from nodes.turn import TurnTaking

    checks: list[Check] = []
    resumes: list[float] = []
    pos, sil = [0], [0]

    async def scored(audio: np.ndarray) -> float:
        (p,) = model.predict([audio])
        checks.append((pos[0] / RATE, sil[0] * 1000 / RATE, p))
        return 0.5  # undecided: the pause goes on being scored

    tt = TurnTaking(
        min_silence_ms=probe_ms, eot_min_ms=160, eot_max_ms=probe_ms, turn_model=scored, turn_hold=0.0,
        turn_done=1.0, turn_every_ms=CHECKS_EVERY_MS,
    )  # fmt: skip

    async def windows() -> Any:
        state = vad.new_state()
        for i in range(0, len(turn.audio) - 511, 512):
            w = turn.audio[i : i + 512]
            p = vad.probability(w, state)
            pos[0] = i + 512
            if p >= tt.threshold and sil[0]:
                resumes.append(pos[0] / RATE)
            sil[0] = 0 if p >= tt.threshold else sil[0] + 512 if p < tt.neg_threshold else sil[0]
            yield w, p

    async for _ in tt.turns(windows(), hints=None):
        pass
    return checks, resumes


def pauses(checks: list[Check]) -> list[list[Check]]:
    """The checks grouped by pause (the silence starts again from the first check)."""
    out: list[list[Check]] = []
    for c in checks:
        if not out or c[1] <= out[-1][-1][1]:
            out.append([])
        out[-1].append(c)
    return out


def decide(
    checks: list[Check],
    resumes: list[float],
    turn: Turn,
    rule: dict[str, Any],
) -> float:
    """The audio time (s) at which ``rule`` ends the turn: in the first pause where, at
    some check, the verdict's silence is reached before the next check and before the
    caller speaks again (a decision in a mid-sentence pause is a false cut-off). The
    verdict: ``eot_max_ms`` when the words so far trail off (``words``: the text said
    before the pause, as a perfect STT would hear it) or P < ``turn_hold``, 0 when P >=
    ``turn_done``, else 500 ms; ``rechecks`` False: only each pause's first check."""
    max_ms = rule["eot_max_ms"]
    groups = pauses(checks)
    for g, group in enumerate(groups):
        said = turn.text.split(" ... ")[0] if turn.pause and g == 0 else turn.text
        veto = rule["words"] and trails_off(said)
        at = None
        for k, (t, s, p) in enumerate(group if rule["rechecks"] else group[:1]):
            wait = max_ms if veto or p < rule["turn_hold"] else 0.0 if p >= rule["turn_done"] else 500.0
            at = t + max(0.0, wait - s) / 1000
            if not rule["rechecks"] or k + 1 == len(group) or at <= group[k + 1][0]:
                break
        assert at is not None
        resumed = next((r for r in resumes if r > group[-1][0]), None)
        if resumed is None or at < resumed:  # (else the caller spoke again first)
            return at
    return turn.speech_end_s + max_ms / 1000


def score(traced: list[tuple[Turn, tuple[list[Check], list[float]]]], rule: dict[str, Any]) -> dict[str, Any]:
    """The rule's false cut-off rates and late release over the set."""
    cut = {"complete": 0, "incomplete": 0}
    lates = []
    for t, (checks, resumes) in traced:
        at = decide(checks, resumes, t, rule)
        if at < t.speech_end_s - 0.05:  # before the caller's last word ended
            cut[t.kind] += 1
        elif t.kind == "complete":
            lates.append(max(0.0, at - t.speech_end_s - 0.2) * 1000)
    n = {k: sum(t.kind == k for t, _ in traced) for k in cut}
    return {
        **rule,
        "false_cutoff_rate": cut["incomplete"] / max(1, n["incomplete"]),
        "false_cutoff_rate_complete": cut["complete"] / max(1, n["complete"]),
        "late_release_p50_ms": float(np.percentile(lates, 50)) if lates else None,
        "late_release_p95_ms": float(np.percentile(lates, 95)) if lates else None,
    }


def main() -> None:
    import json

    import anyio

    from benchmarks._common import machine, parser, write_json
    from nodes.smartturn import SmartTurnModel
    from nodes.vad import SileroVAD

    p = parser(__doc__.splitlines()[0])
    p.add_argument("--limit", type=int, default=None, help="turns of each kind per voice")
    p.add_argument("--traces", type=Path, help="score the checks of an earlier --json run again")
    args = p.parse_args()
    if args.traces:
        old = json.loads(args.traces.read_text())["turns"]
        traced = [
            (Turn(d["kind"], d["text"], d["voice"], np.zeros(0), d["end"], d["pause"] and tuple(d["pause"])),
             (d["checks"], d["resumes"]))
            for d in old
        ]  # fmt: skip
    else:
        turns = build(limit=4 if args.quick else args.limit)
        vad, model = SileroVAD().instantiate(), SmartTurnModel()
        traced = [(t, anyio.run(trace, t, vad, model)) for t in turns]
    rules = [
        {
            "rule": "fixed 500 ms",
            "turn_done": 2.0,
            "turn_hold": -1.0,
            "eot_max_ms": 500,
            "rechecks": False,
            "words": False,
        }
    ]
    for words in (False, True):
        for rechecks in (False, True):
            for done in (0.5, 0.7, 0.8, 0.9, 0.95, 0.98):
                for hold in (0.1, 0.3, 0.5, 0.7):
                    for max_ms in (1000, 1300, 1600):
                        if hold <= done:
                            rule = {"turn_done": done, "turn_hold": hold, "eot_max_ms": max_ms}
                            rules.append({"rule": "smart turn", **rule, "rechecks": rechecks, "words": words})
    rows = [score(traced, r) for r in rules]
    ok = sorted(
        (r for r in rows if r["false_cutoff_rate"] <= 0.05), key=lambda r: r["late_release_p50_ms"] or 0
    )
    for r in rows[:1] + ok[:12]:
        print({k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}, flush=True)
    out = [
        {"kind": t.kind, "text": t.text, "voice": t.voice, "pause": t.pause, "end": t.speech_end_s,
         "checks": c, "resumes": r}
        for t, (c, r) in traced
    ]  # fmt: skip
    write_json(
        args.json,
        {"benchmark": "turnset", "machine": machine(), "turn_count": len(out), "rules": rows, "turns": out},
    )


if __name__ == "__main__":
    main()
