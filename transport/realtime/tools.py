"""A chat's tool calls and their results as OpenAI Realtime (GA) items.

``VLLMChat`` runs its tools itself (they are Python functions on the server), so a
Realtime client sees what happened rather than being asked to run anything: each
``ToolCall`` is a ``function_call`` output item of the turn's response
(``response.output_item.added``, ``conversation.item.added``, the arguments as one
``response.function_call_arguments.delta`` and ``.done``, then the item's ``done``
events), and each ``ToolResult`` a ``function_call_output`` conversation item
(``conversation.item.added`` / ``done``) with the result as JSON text, as a client
would have created it. The reply the model then speaks is the response's next output
item, and ``response.done`` lists them all. A tool that failed also gets an ``error``
event naming it (the output item says ``{"error": ..., "code": ...}``); the session
goes on. The schema is the ``openai`` package's ``types/realtime``
(``RealtimeConversationItemFunctionCall``, ``...FunctionCallOutput``,
``ResponseFunctionCallArguments{Delta,Done}Event``).
"""

from __future__ import annotations

from typing import Any, Protocol

import msgspec

from chains.messages import ToolCall, ToolResult
from transport.realtime.conversation import Conversation, Item, Response


class RealtimeSession(Protocol):
    """What of the session (session.py, which imports this module) the items need."""

    conv: Conversation
    sess: Any

    async def open_response(self, epoch: int, message: bool = True) -> Response | None: ...

    async def emit(self, type_: str, **fields: Any) -> None: ...


def _json(value: Any) -> str:
    try:
        return msgspec.json.encode(value).decode()
    except TypeError:
        return msgspec.json.encode(repr(value)).decode()


async def tool_call(s: RealtimeSession, ev: ToolCall, epoch: int) -> None:
    """The call as a completed ``function_call`` output item of the turn's response."""
    resp = await s.open_response(epoch, message=False)
    if resp is None:
        return  # a turn already cut
    item = Item("assistant", kind="function_call")
    item.name, item.call_id, item.arguments = ev.name, ev.id, _json(ev.args)
    index = len(resp.outputs)
    resp.outputs.append(item)
    prev = s.conv.add(item)
    where = {"response_id": resp.id, "item_id": item.id, "output_index": index, "call_id": ev.id}
    await s.emit("conversation.item.added", item=item.json(), previous_item_id=prev)
    await s.emit("response.output_item.added", response_id=resp.id, output_index=index, item=item.json())
    await s.emit("response.function_call_arguments.delta", **where, delta=item.arguments)
    await s.emit("response.function_call_arguments.done", **where, name=ev.name, arguments=item.arguments)
    item.status = "completed"
    await s.emit("response.output_item.done", response_id=resp.id, output_index=index, item=item.json())
    await s.emit("conversation.item.done", item=item.json(), previous_item_id=prev)


async def tool_result(s: RealtimeSession, ev: ToolResult, epoch: int) -> None:
    """The result as a ``function_call_output`` item (and an ``error`` if the tool failed)."""
    if epoch != s.sess.epoch:
        return  # the turn was cut while its tool ran
    item = Item("tool", kind="function_call_output")
    item.call_id = ev.id
    if ev.error is not None:
        item.output = _json({"error": ev.error, "code": ev.code or "tool_error"})
    else:
        item.output = ev.result if isinstance(ev.result, str) else _json(ev.result)
    prev = s.conv.add(item)
    await s.emit("conversation.item.added", item=item.json(), previous_item_id=prev)
    await s.emit("conversation.item.done", item=item.json(), previous_item_id=prev)
    if ev.error is not None:
        err = {"type": "server_error", "code": ev.code or "tool_error", "message": f"{ev.name}: {ev.error}"}
        await s.emit("error", error=err)


__all__ = ["tool_call", "tool_result"]
