"""The event loop a server runs on: uvloop where it is installed, asyncio's own
otherwise (or with ``CHAINS_LOOP=asyncio``).

Why: a chain server's own cost per live session is mostly the loop's: waking on each
socket, reading and writing websocket frames, scheduling the session's tasks. uvloop
(libuv under the asyncio API, what uvicorn picks by default) does that work in C:
measured on a voice chain with model stand-ins (the project's soak benchmark), the
server spent 1.6-1.7 ms of CPU per live session-second against 2.8 ms on asyncio's
loop. Everything in chains is plain asyncio/anyio, so nothing else changes.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from chains.errors import ChainsError

T = TypeVar("T")
LOOPS = ("auto", "uvloop", "asyncio")


def loop_factory(choice: str | None = None) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The loop factory for ``choice`` (default: ``CHAINS_LOOP``, else "auto"); None
    means asyncio's default loop."""
    choice = (choice or os.environ.get("CHAINS_LOOP") or "auto").lower()
    if choice not in LOOPS:
        raise ChainsError(f"CHAINS_LOOP must be one of {', '.join(LOOPS)}, not {choice!r}")
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ChainsError("CHAINS_LOOP=uvloop, but uvloop is not installed: pip install uvloop") from None
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T], choice: str | None = None) -> T:
    """``asyncio.run(main)`` on the loop ``choice`` names (see ``loop_factory``)."""
    with asyncio.Runner(loop_factory=loop_factory(choice)) as runner:
        return runner.run(main)
