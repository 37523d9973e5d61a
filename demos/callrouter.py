"""A phone-call router: the caller speaks, the chain works out what they want and
who they are, and the department that handles it answers with a spoken
confirmation.

    chains run demos/callrouter.py --input demos/assets/calls/billing.wav --output reply.wav
    chains run demos/callrouter.py                       # serve; browser at http://127.0.0.1:8765/

VAD (per session) -> Whisper (batched) -> two structured-output LLM stages on one
shared vLLM engine, side by side: the intent, constrained to one of ``INTENTS``
(``choice=``), and the caller's details decoded into a ``Caller`` struct
(``schema=``) -> a branch per intent (fan-out: each department's node answers the
calls that are its own and returns None for the others) -> merged -> Piper.

The model is SmolLM2-135M: tiny. Unconstrained it answers in free prose that no
program can route; constrained, every reply is a valid intent and a valid
``Caller``. Being right is the prompt's job: it gives examples (few-shot) rather
than instructions, which such a small model follows far better, and the intent's
examples are a plain Q/A completion rather than chat turns (see below). The sample calls
in demos/assets/calls/ (synthesised by make_calls.py) are checked in
tests/integration/test_structured.py.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

import chains
from chains import AudioFrame, Stream, Text
from nodes import PiperTTS, SileroVAD, VLLMExtract, WhisperSTT
from nodes.turn import transcripts

INTENTS = ["billing", "support", "cancel"]


class Caller(msgspec.Struct, frozen=True):
    """What the caller said about themselves, as the department needs it."""

    name: Annotated[str, msgspec.Meta(max_length=40)]
    issue: Annotated[str, msgspec.Meta(max_length=60)]


class Call(chains.Message, frozen=True):
    intent: str
    caller: Caller


# Few-shot, as a plain "Q: ... / A: intent" completion with no instruction at all.
# Measured on nine caller lines (docs/MODELS-notes.md): SmolLM2-135M got 8/9 right
# this way, 3/9 with the same examples as chat turns (it answered "billing" to
# everything), and an instruction on top made it worse. The examples interleave the
# intents.
INTENT_EXAMPLES = [
    ("Hi, I'm Tom. Why is my bill so high this month?", "billing"),
    ("My phone won't connect to the network.", "support"),
    ("Please close my account, I'm moving away.", "cancel"),
    ("The TV box shows a red light and nothing works.", "support"),
    ("I need a refund, you took my payment twice.", "billing"),
    ("I'd like to stop my plan at the end of the month.", "cancel"),
    ("There is a charge on my statement I don't recognise.", "billing"),
    ("I want to end my service with you.", "cancel"),
    ("My email has not worked since yesterday.", "support"),
]
CALLER_EXAMPLES = [
    (
        "Hi, I'm Tom Baker. Why is my bill so high this month?",
        Caller(name="Tom Baker", issue="bill too high"),
    ),
    (
        "Hello, this is Ana Silva, my phone won't connect to the network.",
        Caller(name="Ana Silva", issue="phone cannot connect"),
    ),
    (
        "Good morning, my name is Raj Patel and I want to close my account.",
        Caller(name="Raj Patel", issue="close account"),
    ),
]
CALLER_SYSTEM = "Extract the caller's full name and their issue in a few words, as JSON."


@chains.node
def call(intent: str, caller: Caller) -> Call:
    return Call(intent=intent, caller=caller)


def first_name(c: Caller) -> str:
    return c.name.split()[0] if c.name.strip() else "there"


@chains.node
def billing(c: Call) -> Text | None:
    if c.intent != "billing":
        return None
    return Text(
        text=f"Thank you {first_name(c.caller)}. Billing has opened a review of your account about "
        f"{c.caller.issue}. You will get an answer by email within two days."
    )


@chains.node
def support(c: Call) -> Text | None:
    if c.intent != "support":
        return None
    return Text(
        text=f"Thanks {first_name(c.caller)}. A support ticket is open for {c.caller.issue}. "
        "A technician will call you back within the hour."
    )


@chains.node
def cancel(c: Call) -> Text | None:
    if c.intent != "cancel":
        return None
    return Text(
        text=f"Sorry to see you go, {first_name(c.caller)}. Your cancellation request is recorded, "
        "and our retention team will confirm it today."
    )


@chains.chain(budget_ms=8000)
def callrouter(audio: Stream[AudioFrame]):
    heard = WhisperSTT(model="tiny.en")(SileroVAD()(audio))
    text = transcripts(heard)
    intent = VLLMExtract(system="", choice=INTENTS, examples=INTENT_EXAMPLES, prompt_style="plain")(text)
    caller = VLLMExtract(system=CALLER_SYSTEM, schema=Caller, examples=CALLER_EXAMPLES, max_tokens=64)(text)
    routed = call(intent, caller)
    reply = chains.merge(billing(routed), support(routed), cancel(routed))
    return {"transcript": heard, "call": routed, "reply": reply, "audio": PiperTTS()(reply)}


if __name__ == "__main__":  # vLLM's workers re-import the launching script
    import sys

    from chains.cli import main

    main(["run", __file__, *sys.argv[1:]])
