"""The OpenAI Realtime protocol (GA event names) on a voice chain.

``serve(ws, ...)`` runs one websocket: ``session.created`` first, then the client's
events (client.py) and the chain's outputs as server events (session.py), until
either side leaves. The server answers websocket upgrades at ``/v1/realtime?model=CHAIN``
with it (transport/endpoints.py), so the ``openai`` SDK's realtime client, and the
frameworks that speak the same protocol to a custom URL, talk to a chain as they
would to OpenAI: ``AsyncOpenAI(base_url="http://HOST:PORT/v1").realtime.connect(model=CHAIN)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transport.peer import Socket
from transport.realtime.client import ClientSide
from transport.realtime.session import RealtimeOptions, RealtimeSession, run_session


def pick_chain(runtimes: Mapping[str, Any], model: str | None) -> tuple[str, Any] | None:
    """The chain ``model`` names (the only one when ``model`` is empty)."""
    if model:
        rt = runtimes.get(model)
        return None if rt is None else (model, rt)
    if len(runtimes) == 1:
        return next(iter(runtimes.items()))
    return None


async def serve(
    ws: Socket, runtimes: Mapping[str, Any], model: str | None, options: RealtimeOptions, log: Any
) -> None:
    """Serve one accepted Realtime websocket (authorised already) until it ends."""
    picked = pick_chain(runtimes, model)
    if picked is None:
        names = ", ".join(runtimes)
        msg = (
            f"no chain {model!r}: this server has {names}" if model else f"name a chain with ?model=: {names}"
        )
        state = RealtimeSession(ws, None, options, log, model or "")
        await state.emit(
            "error", error={"type": "invalid_request_error", "code": "model_not_found", "message": msg}
        )
        await ws.close(1008, "unknown model")
        return
    name, rt = picked
    state = RealtimeSession(ws, rt, options, log, name)
    await run_session(state, ClientSide(state))


__all__ = ["RealtimeOptions", "pick_chain", "serve"]
