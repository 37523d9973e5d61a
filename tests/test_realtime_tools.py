"""Tools on the OpenAI Realtime protocol (transport/realtime/tools.py): a voice chain of
fakes whose chat is ``VLLMChat``'s own tool turn on a scripted engine
(tests/test_tools.py). The call is a ``function_call`` output item of the response,
the tool's result a ``function_call_output`` conversation item, the spoken reply the
next output item, ``response.done`` lists both outputs; every server event validates
against the ``openai`` package's schema. A raising tool is an ``error`` and the session
goes on; talking over a slow tool cancels the response with the call as its output.
The real ``openai`` realtime client reads the same items from the real server."""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import anyio
import pydantic
import structlog
from openai import AsyncOpenAI
from openai.types.realtime import RealtimeServerEvent

import chains
from chains import AudioFrame, Stream
from tests.test_tools import Chat, Script, call, lookup_order
from tests.test_tools import say as said
from tests.voice_fakes import MemorySocket, fake_sentences, fake_stt, fake_tts, fake_vad, silence, speech
from transport.realtime import RealtimeOptions, serve
from transport.server import serve as serve_http

SCHEMA: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(RealtimeServerEvent)


def voice_agent(script: Script, tools: Sequence[Any]) -> chains.Chain:
    chat = Chat(script, tools, "auto", 3)

    @chains.chain
    def agent(audio: Stream[AudioFrame]):
        heard = fake_stt(fake_vad(audio))
        reply = chat(heard)
        return {"transcript": heard, "reply": reply, "audio": fake_tts(fake_sentences(reply))}

    return agent


@contextlib.asynccontextmanager
async def realtime(chain: chains.Chain) -> AsyncIterator[MemorySocket]:
    async with chains.Runtime(chain) as rt:
        ws = MemorySocket()
        async with anyio.create_task_group() as tg:
            tg.start_soon(serve, ws, {"agent": rt}, None, RealtimeOptions(), structlog.get_logger())
            assert (await ws.get())["type"] == "session.created"
            with anyio.fail_after(30):  # a hang guard
                yield ws
            ws.hang_up()


async def say(ws: MemorySocket, frames: int) -> None:
    for b in speech(frames) + silence(2):
        await ws.put({"type": "input_audio_buffer.append", "audio": base64.b64encode(b).decode()})


def validated(log: list[dict[str, Any]]) -> None:
    for e in log:
        SCHEMA.validate_python(e)  # raises on a field the openai client would not accept


async def test_a_tool_call_and_its_result_are_function_call_items_and_the_reply_follows() -> None:
    script = Script([call("lookup_order", order_id="4512"), "It ships Friday."])
    async with realtime(voice_agent(script, [lookup_order])) as ws:
        await say(ws, 3)
        log: list[dict[str, Any]] = []
        done = await ws.until("response.done", log)
        await ws.put({"type": "conversation.item.retrieve", "item_id": done["response"]["output"][0]["id"]})
        retrieved = await ws.until("conversation.item.retrieved")
    validated([*log, retrieved])
    kinds = [e["type"] for e in log]
    start = kinds.index("response.created")
    assert (
        kinds[start:]
        == [
            "response.created",
            "conversation.item.added",  # the function_call item
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "conversation.item.done",
            "conversation.item.added",  # its output
            "conversation.item.done",
            "conversation.item.added",  # the spoken reply
            "response.output_item.added",
            "response.content_part.added",
            *kinds[
                kinds.index("response.content_part.added") + 1 : kinds.index("response.output_audio.done")
            ],
            "response.output_audio.done",
            "response.output_audio_transcript.done",
            "response.content_part.done",
            "response.output_item.done",
            "conversation.item.done",
            "response.done",
        ]
    )
    resp_id = log[start]["response"]["id"]
    fc = log[start + 2]["item"]
    assert log[start + 2]["output_index"] == 0 and log[start + 2]["response_id"] == resp_id
    assert fc["type"] == "function_call" and fc["name"] == "lookup_order"
    call_id = fc["call_id"]
    assert json.loads(fc["arguments"]) == {"order_id": "4512"}
    args_done = log[start + 4]
    assert (args_done["call_id"], args_done["name"], args_done["item_id"]) == (
        call_id,
        "lookup_order",
        fc["id"],
    )
    output = log[start + 7]["item"]
    assert output["type"] == "function_call_output" and output["call_id"] == call_id
    assert json.loads(output["output"]) == {"status": "shipped", "arrives": "Friday"}
    message_added = log[start + 10]
    assert message_added["output_index"] == 1 and message_added["item"]["type"] == "message"
    deltas = [e for e in log if e["type"] == "response.output_audio.delta"]
    assert deltas and all(e["output_index"] == 1 for e in deltas)
    out = done["response"]["output"]
    assert done["response"]["status"] == "completed"
    assert [(i["type"], i["status"]) for i in out] == [
        ("function_call", "completed"),
        ("message", "completed"),
    ]
    assert out[0]["call_id"] == call_id and out[1]["content"][0]["transcript"] == "It ships Friday."
    assert retrieved["item"] == out[0]  # the call is a conversation item too


async def test_a_raising_tool_is_an_error_and_a_failed_output_and_the_session_goes_on() -> None:
    def broken(order_id: str) -> str:
        """Always fails."""
        raise RuntimeError("database down")

    script = Script([call("broken", order_id="1"), "Sorry, try later.", said("Madrid.")])
    async with realtime(voice_agent(script, [broken])) as ws:
        await say(ws, 3)
        log: list[dict[str, Any]] = []
        done = await ws.until("response.done", log)
        await say(ws, 4)  # the next turn is answered
        second = await ws.until("response.done")
    validated([*log, second])
    output = next(e["item"] for e in log if e.get("item", {}).get("type") == "function_call_output")
    assert json.loads(output["output"]) == {"error": "RuntimeError: database down", "code": "tool_error"}
    (err,) = [e for e in log if e["type"] == "error"]
    assert err["error"]["code"] == "tool_error" and "broken" in err["error"]["message"]
    assert done["response"]["output"][1]["content"][0]["transcript"] == "Sorry, try later."
    assert second["response"]["output"][0]["content"][0]["transcript"] == "Madrid."


async def test_talking_over_a_slow_tool_cancels_the_response_with_the_call_as_its_output() -> None:
    started, cancelled = anyio.Event(), anyio.Event()

    async def slow_lookup(order_id: str) -> str:
        """Looks an order up, slowly."""
        started.set()
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()
        return "never"

    script = Script([call("slow_lookup", order_id="7"), said("Madrid.")])
    async with realtime(voice_agent(script, [slow_lookup])) as ws:
        await say(ws, 3)
        log: list[dict[str, Any]] = []
        await ws.until("response.function_call_arguments.done", log)
        await started.wait()
        await say(ws, 4)  # the user talks over the tool
        done = await ws.until("response.done", log)
        await cancelled.wait()
        await ws.until("response.done", log)  # the new turn's reply
    validated(log)
    assert done["response"]["status"] == "cancelled"
    assert [i["type"] for i in done["response"]["output"]] == ["function_call"]
    kinds = [e["type"] for e in log]
    assert "conversation.item.truncated" not in kinds  # no reply item was ever shown
    assert not any(e.get("item", {}).get("type") == "function_call_output" for e in log)


async def test_the_openai_client_reads_the_call_its_output_and_the_reply() -> None:
    script = Script([call("lookup_order", order_id="4512"), "It ships Friday."])
    async with serve_http(voice_agent(script, [lookup_order]), port=0, token="tok") as srv:
        api = AsyncOpenAI(base_url=f"http://127.0.0.1:{srv.port}/v1", api_key="tok", max_retries=0)
        with anyio.fail_after(60):
            async with api.realtime.connect(model="agent", max_retries=0) as conn:
                assert (await conn.recv()).type == "session.created"
                for b in speech(3) + silence(2):
                    await conn.input_audio_buffer.append(audio=base64.b64encode(b).decode())
                events: list[Any] = []
                while not events or events[-1].type != "response.done":
                    events.append(await conn.recv())
    by_type = {e.type: e for e in events}
    args = by_type["response.function_call_arguments.done"]
    assert (args.name, json.loads(args.arguments)) == ("lookup_order", {"order_id": "4512"})
    outputs = [e.item for e in events if e.type == "conversation.item.done"]
    result = next(i for i in outputs if i.type == "function_call_output")
    assert result.call_id == args.call_id and json.loads(result.output)["arrives"] == "Friday"
    call_item, message = by_type["response.done"].response.output
    assert call_item.type == "function_call" and call_item.call_id == args.call_id
    assert message.type == "message" and message.content[0].transcript == "It ships Friday."
