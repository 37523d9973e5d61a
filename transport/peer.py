"""The websocket operations the Realtime and Twilio adapters need, as a Protocol.

Why: the adapters' logic (events, pacing, what was heard) should not depend on which
server accepted the socket. They need four things: receive one message (text or
binary; ``Gone`` when the peer left), send text, close, and the size limit they check
themselves. The server's accepted socket is wrapped to this (``endpoints.py``);
tests drive the adapters through an in-memory pair.
"""

from __future__ import annotations

from typing import Protocol


class Gone(Exception):
    """The peer closed the websocket or it was lost."""


class Socket(Protocol):
    async def recv(self) -> str | bytes:
        """The next message (``Gone`` once the peer has left)."""
        ...

    async def send_text(self, data: str) -> None: ...

    async def close(self, code: int = 1000, reason: str = "") -> None: ...


__all__ = ["Gone", "Socket"]
