"""A voice agent with tools: the caller asks, the model looks it up, and answers aloud.

    chains run demos/agent.py --input demos/assets/agent/order.wav --output reply.wav
    chains run demos/agent.py                      # serve; browser at http://127.0.0.1:8765/

VAD (per session) -> Whisper (batched) -> VLLMChat with two tools -> speech chunks
-> Piper. The tools are plain typed Python functions (here a small order table and
a call-back book standing in for a shop's systems): ``VLLMChat(tools=[...])``
describes them to the model, constrains each reply to either words for the caller
or a call of one tool with valid arguments, runs the call (its own timeout, its
errors given back to the model, cancelled if the caller talks over it), gives the
result back and lets the model answer. A client sees each call and result as
``tool_call`` / ``tool_result`` events.

The model is SmolLM2-135M: ``tool_choice="required"`` makes the first round a call
(left to itself, "auto", it rarely called a tool in the lines tried, see
BENCHMARKS.md) and ``max_tool_rounds=1`` has it answer right after one result.
Which tool, and the arguments, are still its choice: an order number it heard is
looked up, digits only.
"""

from __future__ import annotations

import re

import anyio

import chains
from chains import AudioFrame, Stream
from nodes import PiperTTS, SileroVAD, VLLMChat, WhisperSTT
from nodes.sentences import speech_chunks
from nodes.turn import transcripts

ORDERS = {
    "4512": {"status": "shipped", "arrives": "Friday"},
    "7731": {"status": "being packed", "arrives": "next Monday"},
    "1200": {"status": "delivered", "arrives": "yesterday"},
}
CALLBACKS: list[dict[str, str]] = []  # booked call backs (a real agent would write to a calendar)


def lookup_order(order_id: str) -> dict[str, str]:
    """Look up an order's status and delivery day.

    Args:
        order_id: the order number, digits only
    """
    digits = re.sub(r"\D", "", order_id)
    return ORDERS.get(digits, {"status": f"no order {digits or order_id} found"})


async def book_callback(phone: str, time: str) -> str:
    """Book a call back from a person at our shop.

    Args:
        phone: the phone number to call
        time: when to call, e.g. tomorrow at 10
    """
    await anyio.sleep(0.2)  # the booking system's round trip
    CALLBACKS.append({"phone": phone, "time": time})
    return f"call back booked for {time}"


@chains.chain(budget_ms=8000)
def agent(audio: Stream[AudioFrame]):
    heard = WhisperSTT(model="tiny.en")(SileroVAD()(audio))
    reply = VLLMChat(
        system="You are the phone assistant of a small shop. Answer in one short sentence.",
        tools=[lookup_order, book_callback],
        tool_choice="required",
        max_tool_rounds=1,
    )(transcripts(heard))
    return {"transcript": heard, "reply": reply, "audio": PiperTTS()(speech_chunks(reply))}


if __name__ == "__main__":  # vLLM's workers re-import the launching script
    import sys

    from chains.cli import main

    main(["run", __file__, *sys.argv[1:]])
