"""The websocket routes of the two client protocols that are not ours: the OpenAI
Realtime protocol at ``/v1/realtime?model=CHAIN`` and Twilio Media Streams at
``/twilio`` (transport/app.py lists them with every other route).

Each is a raw ASGI app, like our own protocol's endpoint: it accepts the socket,
takes one of the server's session slots (the same limit and waiting room), wraps the
socket in the small interface the adapters use (transport/peer.py) and runs the
adapter until the call ends. The token: ``Authorization: Bearer`` (or ``?token=``)
for Realtime; the ``token`` custom parameter of Twilio's ``start`` (or ``?token=``)
for Twilio, which can set no header.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from starlette.routing import BaseRoute, WebSocketRoute

from transport import realtime, twilio
from transport.http import token_from, token_matches
from transport.peer import Gone
from transport.wsocket import AsgiSocket, SocketClosed


class _Peer:
    """An accepted ``AsgiSocket`` as ``transport.peer.Socket``."""

    def __init__(self, sock: AsgiSocket):
        self.sock = sock

    async def recv(self) -> str | bytes:
        try:
            return await self.sock.recv()
        except SocketClosed:
            raise Gone() from None

    async def send_text(self, data: str) -> None:
        try:
            await self.sock.send(data)
        except SocketClosed:
            raise Gone() from None

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self.sock.close(code, reason)


class SessionEndpoint:
    """A websocket route where one socket is one session, whatever its protocol: accept,
    take one of the server's session slots (one limit and waiting room for every
    protocol), serve, give the slot back. Subclasses say how to serve and how to refuse."""

    def __init__(self, served: Any):
        self.served = served

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        srv = self.served
        sock = AsgiSocket(scope, receive, send)
        try:
            await sock.accept()
        except SocketClosed:
            return
        if not await srv.sessions.take():
            srv.stats["overloaded"] += 1
            await self.refuse(sock)
            return
        srv.stats["connections"] += 1
        try:
            await self.serve(sock)
        finally:
            srv.sessions.give()

    async def refuse(self, sock: AsgiSocket) -> None:
        """At the session limit after the waiting room (a close with when to retry)."""
        await sock.close(1013, f"overloaded; retry after {self.served.sessions.retry_after_s:g} s")

    async def serve(self, sock: AsgiSocket) -> None:
        raise NotImplementedError


class _Endpoint(SessionEndpoint):
    """A foreign protocol's adapter on the socket, seen through ``transport.peer``."""

    async def serve(self, sock: AsgiSocket) -> None:
        try:
            await self.serve_peer(sock, _Peer(sock))
        except Gone:
            pass
        finally:
            await sock.close(1000, "")

    async def serve_peer(self, sock: AsgiSocket, peer: _Peer) -> None:
        raise NotImplementedError


class RealtimeEndpoint(_Endpoint):
    async def serve_peer(self, sock: AsgiSocket, peer: _Peer) -> None:
        srv = self.served
        query = sock.query_string
        if not token_matches(token_from(sock.header("authorization"), query), srv.token):
            srv.stats["unauthorized"] += 1
            err = {
                "type": "invalid_request_error",
                "code": "invalid_api_key",
                "message": "wrong or missing token",
            }
            await peer.send_text(realtime.session.error_event(err))
            await sock.close(1008, "unauthorized")
            return
        model = next(iter(parse_qs(query).get("model", [])), None)
        options = realtime.RealtimeOptions(
            lead_ms=srv.limits.lead_ms, max_message_bytes=srv.limits.max_message_bytes
        )
        await realtime.serve(peer, srv.runtimes, model, options, srv.log)


class TwilioEndpoint(_Endpoint):
    async def serve_peer(self, sock: AsgiSocket, peer: _Peer) -> None:
        srv = self.served
        query_token = next(iter(parse_qs(sock.query_string).get("token", [])), None)
        options = twilio.TwilioOptions(
            lead_ms=srv.limits.lead_ms, max_message_bytes=srv.limits.max_message_bytes
        )
        await twilio.serve(peer, srv.runtimes, srv.token, query_token, options, srv.log)


def voice_routes(served: Any) -> list[BaseRoute]:
    """The Realtime and Twilio websocket routes (before the catch-alls)."""
    return [
        WebSocketRoute("/v1/realtime", RealtimeEndpoint(served)),
        WebSocketRoute("/twilio", TwilioEndpoint(served)),
    ]


__all__ = ["RealtimeEndpoint", "SessionEndpoint", "TwilioEndpoint", "voice_routes"]
