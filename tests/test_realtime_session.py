"""The OpenAI Realtime adapter (transport/realtime/) over an in-memory websocket, on
a voice chain of fakes (tests/voice_fakes.py): a spoken turn's events in order, paced
audio, truncate/cancel/barge-in cutting the item and the chat history to what was
heard, session.update, manual turns and the G.711 formats."""

from __future__ import annotations

import base64
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
import structlog

import chains
from chains.history import MARK
from tests.voice_fakes import PROMPTS, MemorySocket, fake_voice, silence, speech
from transport.g711 import ulaw_to_pcm16
from transport.realtime import RealtimeOptions, serve


@contextlib.asynccontextmanager
async def realtime(**options: Any) -> AsyncIterator[MemorySocket]:
    async with chains.Runtime(fake_voice) as rt:
        ws = MemorySocket()
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                serve, ws, {"fake_voice": rt}, None, RealtimeOptions(**options), structlog.get_logger()
            )
            created = await ws.get()
            assert created["type"] == "session.created"
            with anyio.fail_after(30):  # a hang guard
                yield ws
            ws.hang_up()


async def say(ws: MemorySocket, frames: int, rate: int = 24000) -> None:
    for b in speech(frames, rate) + silence(2, rate):
        await ws.put({"type": "input_audio_buffer.append", "audio": base64.b64encode(b).decode()})


def types(log: list[dict[str, Any]]) -> list[str]:
    out: list[str] = []
    for e in log:
        if not out or out[-1] != e["type"]:
            out.append(e["type"])
    return out


async def test_a_spoken_question_gets_transcript_paced_audio_and_response_done() -> None:
    PROMPTS.clear()
    async with realtime() as ws:
        await say(ws, 3)
        log: list[dict[str, Any]] = []
        done = await ws.until("response.done", log)
    assert types(log) == [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.done",
        "conversation.item.input_audio_transcription.completed",
        "response.created",
        "conversation.item.added",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_audio_transcript.delta",
        "response.output_audio.delta",
        "response.output_audio.done",
        "response.output_audio_transcript.done",
        "response.content_part.done",
        "response.output_item.done",
        "conversation.item.done",
        "response.done",
    ]
    transcript = next(e for e in log if e["type"].endswith("transcription.completed"))["transcript"]
    assert transcript == "What is the capital of France?"
    audio = b"".join(base64.b64decode(e["delta"]) for e in log if e["type"] == "response.output_audio.delta")
    assert len(audio) // 2 == 24000 * 11 * 200 // 1000  # 11 words of 200 ms, at 24 kHz
    assert done["response"]["status"] == "completed"
    assert done["response"]["output"][0]["content"][0]["transcript"].endswith("on the Seine.")


async def test_truncate_cuts_the_item_and_the_next_prompt_to_the_words_played() -> None:
    PROMPTS.clear()
    async with realtime() as ws:
        await say(ws, 3)
        log: list[dict[str, Any]] = []
        for _ in range(20):  # 800 ms of audio received (clamping is tested below)
            first_audio = await ws.until("response.output_audio.delta", log)
        item_id = first_audio["item_id"]
        # the client played 600 ms, then the user talked: it stops playback and truncates
        await ws.put(
            {
                "type": "conversation.item.truncate",
                "event_id": "ev1",
                "item_id": item_id,
                "content_index": 0,
                "audio_end_ms": 600,
            }
        )
        done = await ws.until("response.done", log)
        truncated = await ws.until("conversation.item.truncated", log)
        await ws.put({"type": "conversation.item.retrieve", "item_id": item_id})
        retrieved = await ws.until("conversation.item.retrieved")
        await say(ws, 4)  # "And of Spain?"
        await ws.until("response.done")
    assert done["response"]["status"] == "cancelled"
    assert truncated["audio_end_ms"] == 600 and truncated["item_id"] == item_id
    # three words of 200 ms (each ends 20 ms before its slot): all three played by 600 ms
    assert retrieved["item"]["content"][0]["transcript"] == "The capital of"
    assert retrieved["item"]["status"] == "incomplete"
    assert "assistant: The capital of" + MARK in PROMPTS[-1]
    assert "Paris" not in PROMPTS[-1]


async def test_truncate_is_clamped_to_the_audio_sent() -> None:
    async with realtime() as ws:
        await say(ws, 5)  # "Tell me more." -> "It is big." (600 ms)
        done = await ws.until("response.done")
        item_id = done["response"]["output"][0]["id"]
        await ws.put(
            {
                "type": "conversation.item.truncate",
                "item_id": item_id,
                "content_index": 0,
                "audio_end_ms": 999_999,
            }
        )
        truncated = await ws.until("conversation.item.truncated")
        await ws.put({"type": "conversation.item.retrieve", "item_id": item_id})
        retrieved = await ws.until("conversation.item.retrieved")
    assert truncated["audio_end_ms"] == 600
    assert retrieved["item"]["content"][0]["transcript"] == "It is big."


async def test_talking_over_the_reply_cancels_it_and_keeps_what_was_played() -> None:
    PROMPTS.clear()
    async with realtime() as ws:
        await say(ws, 3)
        log: list[dict[str, Any]] = []
        await ws.until("response.output_audio.delta", log)
        await anyio.sleep(0.5)  # some of it plays
        await say(ws, 4)  # barge-in: the VAD interrupts the turn
        done = await ws.until("response.done", log)
        truncated = await ws.until("conversation.item.truncated", log)
        await ws.until("response.done")  # the answer to "And of Spain?"
    assert done["response"]["status"] == "cancelled"
    heard = done["response"]["output"][0]["content"][0]["transcript"]
    full = "The capital of France is Paris, a city on the Seine."
    assert full.startswith(heard) and len(heard) < len(full)
    assert 0 < truncated["audio_end_ms"] < 11 * 200
    assert PROMPTS[-1].count(MARK) == 1 and ("assistant: " + heard + MARK) in PROMPTS[-1]


async def test_response_cancel_stops_the_audio() -> None:
    async with realtime() as ws:
        await say(ws, 3)
        first = await ws.until("response.output_audio.delta")
        await ws.put({"type": "response.cancel", "event_id": "c1"})
        log: list[dict[str, Any]] = []
        done = await ws.until("response.done", log)
        await ws.put({"type": "response.cancel", "event_id": "c2"})  # nothing active any more
        err = await ws.until("error")
    assert done["response"]["status"] == "cancelled" and done["response"]["id"] == first["response_id"]
    assert err["error"]["event_id"] == "c2" and err["error"]["code"] == "response_cancel_not_active"


async def test_session_update_sets_instructions_and_formats() -> None:
    PROMPTS.clear()
    async with realtime() as ws:
        await ws.put(
            {
                "type": "session.update",
                "session": {
                    "type": "realtime",
                    "instructions": "Answer like a pirate.",
                    "audio": {
                        "input": {
                            "format": {"type": "audio/pcmu"},
                            "turn_detection": {"type": "server_vad", "silence_duration_ms": 300},
                        },
                        "output": {"format": {"type": "audio/pcmu"}},
                    },
                },
            }
        )
        updated = await ws.until("session.updated")
        for b in speech(5, 8000) + silence(2, 8000):
            from transport.g711 import pcm16_to_ulaw

            await ws.put(
                {"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm16_to_ulaw(b)).decode()}
            )
        log: list[dict[str, Any]] = []
        await ws.until("response.done", log)
    audio = updated["session"]["audio"]
    assert audio["input"]["format"] == {"type": "audio/pcmu"} and audio["output"]["format"] == {
        "type": "audio/pcmu"
    }
    assert audio["input"]["turn_detection"] == {"type": "server_vad", "silence_duration_ms": 300}
    assert PROMPTS[-1].startswith("system: Answer like a pirate.")
    ulaw = b"".join(base64.b64decode(e["delta"]) for e in log if e["type"] == "response.output_audio.delta")
    assert len(ulaw) == 8 * 600  # "It is big." is 600 ms: one byte per sample at 8 kHz
    assert len(ulaw_to_pcm16(ulaw)) == 2 * len(ulaw)


async def test_manual_turns_commit_then_response_create() -> None:
    async with realtime() as ws:
        await ws.put({"type": "session.update", "session": {"audio": {"input": {"turn_detection": None}}}})
        assert (await ws.until("session.updated"))["session"]["audio"]["input"]["turn_detection"] is None
        await ws.put({"type": "input_audio_buffer.commit", "event_id": "empty"})
        err = await ws.until("error")
        for b in speech(4):
            await ws.put({"type": "input_audio_buffer.append", "audio": base64.b64encode(b).decode()})
        await ws.put({"type": "input_audio_buffer.commit"})
        committed = await ws.until("input_audio_buffer.committed")
        await ws.put({"type": "response.create"})
        done = await ws.until("response.done")
    assert err["error"]["code"] == "input_audio_buffer_commit_empty" and err["error"]["event_id"] == "empty"
    assert committed["item_id"]
    assert done["response"]["output"][0]["content"][0]["transcript"] == "Madrid."


async def test_a_created_text_item_is_context_for_the_next_spoken_turn() -> None:
    PROMPTS.clear()
    async with realtime() as ws:
        await ws.put(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "I am Zed."}],
                },
            }
        )
        await ws.until("conversation.item.done")
        await say(ws, 5)
        await ws.until("response.done")
    assert PROMPTS[-1].splitlines() == ["system: Be brief.", "user: I am Zed.", "user: Tell me more."]


async def test_items_create_retrieve_delete() -> None:
    async with realtime() as ws:
        await ws.put(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "id": "u1",
                    "content": [{"type": "input_text", "text": "hello"}],
                },
            }
        )
        added = await ws.until("conversation.item.added")
        await ws.put({"type": "conversation.item.retrieve", "item_id": "u1"})
        got = await ws.until("conversation.item.retrieved")
        await ws.put({"type": "conversation.item.delete", "item_id": "u1"})
        deleted = await ws.until("conversation.item.deleted")
        await ws.put({"type": "conversation.item.retrieve", "item_id": "u1", "event_id": "r2"})
        err = await ws.until("error")
    assert added["item"]["id"] == "u1" and got["item"]["content"][0] == {
        "type": "input_text",
        "text": "hello",
    }
    assert deleted["item_id"] == "u1"
    assert err["error"]["code"] == "item_not_found" and err["error"]["event_id"] == "r2"


@pytest.mark.parametrize(
    ("event", "code"),
    [
        ("{not json", "invalid_json"),
        ('["a list"]', "invalid_json"),
        ({"type": "no.such.event", "event_id": "x"}, "invalid_event"),
        ({"event_id": "x"}, "invalid_event"),
        ({"type": "input_audio_buffer.append", "event_id": "x", "audio": 5}, "invalid_value"),
        ({"type": "input_audio_buffer.append", "event_id": "x", "audio": "%%%"}, "invalid_audio"),
        ({"type": "input_audio_buffer.append", "event_id": "x", "audio": "AAAA"}, "invalid_audio"),  # 3 bytes
        (
            {
                "type": "session.update",
                "event_id": "x",
                "session": {"audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}},
            },
            "invalid_value",
        ),
        (
            {
                "type": "session.update",
                "event_id": "x",
                "session": {"audio": {"output": {"format": {"type": "audio/opus"}}}},
            },
            "invalid_value",
        ),
        (
            {
                "type": "conversation.item.truncate",
                "event_id": "x",
                "item_id": "nope",
                "content_index": 0,
                "audio_end_ms": 5,
            },
            "item_not_found",
        ),
        ({"type": "conversation.item.delete", "event_id": "x", "item_id": "nope"}, "item_not_found"),
        ({"type": "input_audio_buffer.commit", "event_id": "x"}, "invalid_request"),
        ({"type": "response.create", "event_id": "x"}, "no_input"),
        (b"\x00\x01", "invalid_event"),
    ],
)
async def test_bad_events_get_an_error_naming_them_and_the_session_goes_on(event: Any, code: str) -> None:
    async with realtime() as ws:
        await ws.put(event)
        err = await ws.until("error")
        await say(ws, 5)
        done = await ws.until("response.done")
    assert err["error"]["code"] == code
    if isinstance(event, dict) and "event_id" in event:
        assert err["error"]["event_id"] == "x"
    assert done["response"]["status"] == "completed"


async def test_an_oversized_message_is_refused_without_decoding_it() -> None:
    async with realtime(max_message_bytes=1 << 16) as ws:
        await ws.put('{"type": "input_audio_buffer.append", "audio": "' + "A" * (1 << 17) + '"}')
        err = await ws.until("error")
        await say(ws, 5)
        done = await ws.until("response.done")
    assert err["error"]["code"] == "message_too_large"
    assert done["response"]["status"] == "completed"


@pytest.mark.parametrize("knob", ["create_response", "interrupt_response"])
async def test_a_vad_knob_the_chain_cannot_honour_is_refused_naming_it(knob: str) -> None:
    PROMPTS.clear()
    async with realtime() as ws:
        vad = {"type": "server_vad", knob: False}
        update = {"instructions": "Answer like a pirate.", "audio": {"input": {"turn_detection": vad}}}
        await ws.put({"type": "session.update", "event_id": "ev_1", "session": update})
        err = (await ws.until("error"))["error"]
        assert err["param"] == f"session.audio.input.turn_detection.{knob}"
        assert err["event_id"] == "ev_1" and "not supported" in err["message"]
        assert "turn_detection null" in err["message"]  # what to do instead
        # nothing of the update applied: the VAD still answers, without the instructions
        await say(ws, 4)
        await ws.until("response.done")
        # the knob left true is accepted
        vad = {"type": "server_vad", knob: True}
        await ws.put({"type": "session.update", "session": {"audio": {"input": {"turn_detection": vad}}}})
        updated = await ws.until("session.updated")
    assert updated["session"]["audio"]["input"]["turn_detection"] == vad
    assert not PROMPTS[-1].startswith("system: Answer like a pirate.")
