"""What a session produces: ``Output(name, value, origin, epoch)``.

Besides the chain's own named outputs a session has two reserved ones, named here
once: ``ERROR`` (an ``ErrorEvent``: an item failed or was shed; the session goes on)
and ``EVENTS`` (control events: ``Interrupt``, ``EndOfTurn``, ...). A chain may not
name an output after either (the compiler refuses it).
"""

from typing import Any, NamedTuple

ERROR = "error"
EVENTS = "events"
RESERVED = frozenset((ERROR, EVENTS))
# A chain output the transport shows as the user's words: ``Text`` items are final, a
# ``TextDelta`` with ``final=False`` is an interim transcript (words so far, replaced
# by the next one), never a turn's output.
TRANSCRIPT = "transcript"


class Output(NamedTuple):
    """One item a session produced: which output, the value, and its provenance."""

    name: str
    value: Any
    origin: float  # time.monotonic() when the input that caused it arrived
    epoch: int  # the turn it belongs to

    @property
    def is_error(self) -> bool:
        return self.name == ERROR

    @property
    def is_event(self) -> bool:
        return self.name == EVENTS

    @property
    def is_interim(self) -> bool:
        """An interim transcript: shown while the user speaks, then replaced."""
        v = self.value
        return self.name == TRANSCRIPT and getattr(v, "final", True) is False

    @property
    def is_data(self) -> bool:
        """One of the chain's own outputs (neither an error nor a control event)."""
        return self.name not in RESERVED


__all__ = ["ERROR", "EVENTS", "RESERVED", "TRANSCRIPT", "Output"]
