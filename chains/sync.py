"""``chains.call_sync``: a chain called from plain synchronous code (a script, a REPL).

Why a loop in a thread: ``chains.call`` serves every call of a chain in one event loop
from one default runtime (runtime/default.py), so models load once and calls batch
together. Synchronous code has no loop, and ``asyncio.run`` per call would load the
models per call. So the first ``call_sync`` starts one event loop in a daemon thread
(an anyio ``BlockingPortal``) and every ``call_sync`` runs ``chains.call`` there: they
share that loop's default runtimes as ``await chains.call`` shares its loop's. At
interpreter exit (or ``shutdown()``) the loop ends, and its runtimes close with it.

Inside a running event loop it refuses: blocking that loop's thread until the call
is done would stall everything else the loop serves; ``await chains.call`` is the
way there.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import threading
from typing import Any

import anyio
from anyio.from_thread import BlockingPortal

from chains.errors import ChainsError

_lock = threading.Lock()
_portal: BlockingPortal | None = None
_thread: threading.Thread | None = None


def _start() -> BlockingPortal:
    box: dict[str, BlockingPortal] = {}
    ready = threading.Event()

    async def serve() -> None:
        async with BlockingPortal() as portal:
            box["portal"] = portal
            ready.set()
            await portal.sleep_until_stopped()

    def main() -> None:
        try:
            anyio.run(serve)  # its end cancels what is left: the default runtimes close
        finally:
            ready.set()

    global _thread
    _thread = threading.Thread(target=main, name="chains:call_sync", daemon=True)
    _thread.start()
    ready.wait()
    if "portal" not in box:
        raise ChainsError("chains.call_sync: its event loop thread failed to start")
    return box["portal"]


def _the_portal() -> BlockingPortal:
    global _portal
    with _lock:
        if _portal is None:
            _portal = _start()
            atexit.register(shutdown)
        return _portal


def call_sync(chain: Any, *inputs: Any) -> Any:
    """``chains.call(chain, *inputs)`` from synchronous code: the same result, the same
    errors (``chains.NodeError``, ...), and one runtime per chain shared by every
    ``call_sync`` of the process (models load once; concurrent calls from several
    threads batch together). Not for async code: there, ``await chains.call(...)``.
    Ctrl-C cancels the call in flight."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise ChainsError(
            "chains.call_sync would block the event loop this code runs in until the call "
            "is done: in async code use `await chains.call(chain, ...)`"
        )
    from chains.api import call

    future = _the_portal().start_task_soon(call, chain, *inputs)
    try:
        return future.result()
    except KeyboardInterrupt:
        future.cancel()
        raise


def shutdown(timeout: float = 30.0) -> None:
    """End ``call_sync``'s event loop now (its runtimes close, their models are released);
    the next ``call_sync`` starts a new one. Runs by itself at interpreter exit."""
    global _portal, _thread
    with _lock:
        portal, thread = _portal, _thread
        _portal = _thread = None
    if portal is None:
        return
    with contextlib.suppress(RuntimeError):  # its loop already ended
        portal.call(portal.stop, True)
    if thread is not None:
        thread.join(timeout)


__all__ = ["call_sync", "shutdown"]
