"""What a websocket connection needs from whoever accepted it: limits, the token, the
sample rates, the runtimes it may start sessions on, and where to count and log.

Why its own module: the connection used to take the whole server, and the server
imports the connection, so the two imported each other. Now the server builds a
``ConnectionSettings`` and the connection sees nothing else of it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from chains.audio import SAMPLE_RATES


@dataclass(frozen=True)
class Limits:
    """What one client may make the server hold, and for how long."""

    max_sessions: int = 64  # live websocket connections; over it: `overloaded`, close 1013
    # At max_sessions a new session waits this long for a free slot (the waiting room)
    # before it is refused; every refusal says when to retry (`retry_after_s`).
    session_wait_s: float = 2.0
    retry_after_s: float = 1.0
    max_requests: int = 256  # HTTP chain requests in progress; over it (after the wait): 503
    max_body_bytes: int = 32 << 20  # an HTTP request body over this: 413
    max_message_bytes: int = 1 << 20  # larger: `too_big`, close 1009
    idle_timeout_s: float = 120.0  # no message either way for this long: close 1001
    start_timeout_s: float = 10.0  # no valid `start` within this: close 1008
    stall_timeout_s: float = 10.0  # the client reads nothing for this long: close (1008, aborted)
    keepalive_s: float = 5.0  # an idle HTTP keep-alive connection is closed after this
    close_timeout_s: float = 2.0
    ping_interval_s: float | None = 20.0  # keepalive pings; a peer that misses one is dropped
    ping_timeout_s: float | None = 20.0
    max_errors: int = 32  # protocol errors tolerated per connection before closing 1008
    write_limit: int = 64 * 1024  # socket write buffer high-water mark (bytes)
    # received frames buffered before TCP backpressure, for websockets-library servers;
    # the chain server (uvicorn's sans-I/O protocol) reads one message ahead, then pauses
    max_queue: int = 16
    sample_rates: tuple[int, ...] = SAMPLE_RATES
    lead_ms: float = 200.0  # reply audio paced at real time, at most this far ahead of playback


@dataclass
class ConnectionSettings:
    """Shared by every connection of one server. ``runtimes`` and ``stats`` are the
    server's own (live) objects: a runtime started later is seen, counts add up."""

    limits: Limits
    log: Any
    token: str | None = None
    input_sample_rate: int | None = None  # resample client audio to this (default: as sent)
    output_sample_rate: int | None = None  # audio to clients at this rate (default: theirs)
    runtimes: Mapping[str, Any] = field(default_factory=dict)
    stats: Counter[str] = field(default_factory=Counter)

    def runtime_for(self, name: str | None) -> Any | None:
        """The runtime serving chain ``name`` (the first one when None)."""
        if name is None:
            return next(iter(self.runtimes.values()), None)
        return self.runtimes.get(name)


__all__ = ["ConnectionSettings", "Limits"]
