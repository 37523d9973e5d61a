"""Reply audio paced at 1x real time, a bounded lead ahead of what the client played.

Why: a TTS makes audio several times faster than real time. Sent as made, a reply
sits in the client's buffer (or Twilio's), and at a barge-in the server knows
neither how much of it was heard nor can it take back what was sent. Sent at real
time with a small lead (default 200 ms: enough to ride out network jitter), what
went out is at most ``lead_ms`` more than what was played, an interrupt stops the
reply within one frame, and the played position is known: ``sent - lead``, or the
client's own report where its protocol has one (Twilio's mark echoes, a Realtime
client's ``conversation.item.truncate``).

One ``Pacer`` per session, driven by the connection's writer: ``send`` waits until
the frame fits in the lead, then sends it, unless the turn it belongs to was
interrupted meanwhile (then the frame is dropped and ``send`` returns False).
``cut`` is called at the session's interrupt: it wakes a waiting ``send``, and gives
the cut reply's ``Playback`` (ms sent, ms played, the heard text from the TTS's
chunks, runtime/heard.py). Time is read through ``clock`` and waited through
``wait`` so that tests drive it by hand.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio

from chains.messages import Spoken
from runtime.heard import SpokenTrack

DEFAULT_LEAD_MS = 200.0


@dataclass(frozen=True)
class Playback:
    """One reply's audio as it stood when it ended or was cut."""

    epoch: int
    sent_ms: float
    played_ms: float
    heard: str  # the reply's words whose audio was played
    text: str  # everything its sent audio says
    interrupted: bool
    at: float = 0.0  # clock time it ended or was cut
    track: SpokenTrack | None = field(default=None, compare=False, repr=False)  # its words on its timeline
    leads: tuple[float, ...] = field(default=(), compare=False, repr=False)  # lead (ms) after each send


# The last replies of every pacer in the process, with the ms from each cut to the end
# of the last send of the cut turn: what benchmarks/bargein.py reads (nothing else does).
RECENT: deque[Playback] = deque(maxlen=512)
RECENT_STOPS: deque[float] = deque(maxlen=512)


async def _wait(seconds: float, wake: anyio.Event) -> None:
    with anyio.move_on_after(seconds):
        await wake.wait()


class Pacer:
    """Per-session paced audio sender (see the module doc)."""

    def __init__(
        self,
        lead_ms: float = DEFAULT_LEAD_MS,
        *,
        clock: Callable[[], float] = time.monotonic,
        wait: Callable[[float, anyio.Event], Awaitable[None]] = _wait,
        keep: int = 256,
    ):
        if lead_ms <= 0:
            raise ValueError(f"lead_ms must be > 0, got {lead_ms}")
        self.lead_ms = float(lead_ms)
        self.clock = clock
        self._wait = wait
        self._wake = anyio.Event()
        self.epoch: int | None = None  # the turn of the reply being played
        self.track = SpokenTrack()
        self.sent_ms = 0.0
        self._play_end = 0.0  # when the client's buffer runs dry (clock time)
        self.reported_ms: float | None = None  # the client's own report of what it played
        self.replies: deque[Playback] = deque(maxlen=keep)  # per reply: ms sent / played
        self.leads: deque[float] = deque(maxlen=4 * keep)  # lead (ms) right after each send
        self.stops: deque[float] = deque(maxlen=keep)  # ms from a cut to the end of the last old send
        self._cut_at: tuple[int, float] | None = None
        self.dropped = 0  # frames dropped because their turn was cut
        self._sending: int | None = None  # the turn of the send under way
        self._reply_leads: list[float] = []

    # --- where the client is --------------------------------------------------------------
    def lead(self, now: float | None = None) -> float:
        """ms of sent audio the client has not played yet (by the clock)."""
        now = self.clock() if now is None else now
        return max(0.0, self._play_end - now) * 1000.0

    def played_ms(self, now: float | None = None) -> float:
        """ms of the current reply played: the client's report, else sent - lead."""
        if self.reported_ms is not None:
            return min(self.reported_ms, self.sent_ms)
        return self.sent_ms - self.lead(now)

    def report(self, epoch: int, played_ms: float) -> None:
        """The client says it has played ``played_ms`` of turn ``epoch``'s reply."""
        if epoch == self.epoch:
            self.reported_ms = max(self.reported_ms or 0.0, played_ms)
            self._wake.set()

    # --- sending --------------------------------------------------------------------------
    async def send(
        self,
        ms: float,
        epoch: int,
        current: Callable[[], int],
        send: Callable[[], Awaitable[object]],
        spoken: Spoken | None = None,
    ) -> bool:
        """Send ``ms`` of audio of turn ``epoch`` once it fits in the lead (``send`` does
        the sending); False, and nothing sent, when ``current()`` moved past ``epoch``."""
        if epoch != self.epoch:
            self._finish(interrupted=False)
            self.epoch = epoch
        while True:
            if current() != epoch:
                self.dropped += 1
                return False
            over = self.lead() + ms - self.lead_ms
            if over <= 1e-6 or self.lead() == 0.0:  # (float slack)
                break
            self._wake = anyio.Event()
            await self._wait(over / 1000.0, self._wake)
        self._sending = epoch
        try:
            await send()
        finally:
            self._sending = None
        now = self.clock()
        if self._cut_at is not None and self._cut_at[0] == epoch:
            self._stop(1000.0 * (now - self._cut_at[1]))  # a send that began before the cut
        if self.epoch != epoch:
            return True  # cut while it was being sent: counted in the cut reply already
        self._play_end = max(self._play_end, now) + ms / 1000.0
        self.sent_ms += ms
        self.track.add_ms(ms, spoken)
        self.leads.append(self.lead(now))
        self._reply_leads.append(self.leads[-1])
        return True

    # --- ends of replies ------------------------------------------------------------------
    def cut(self, epoch: int) -> Playback | None:
        """Turn ``epoch`` was interrupted: drop what of it is still to send and say how
        much of its reply was played (None when no audio of it went out)."""
        self._wake.set()
        if self.epoch != epoch:
            return None
        now = self.clock()
        self._cut_at = (epoch, now)
        if self._sending != epoch:
            self._stop(0.0)  # nothing more of it goes out
        pb = self._finish(interrupted=True, now=now)
        self._play_end = now  # the client drops its buffer at an interrupt
        return pb

    def _stop(self, ms: float) -> None:
        self.stops.append(ms)
        RECENT_STOPS.append(ms)

    def _finish(self, *, interrupted: bool, now: float | None = None) -> Playback | None:
        if self.epoch is None:
            return None
        now = self.clock() if now is None else now
        played = self.played_ms(now) if interrupted else self.sent_ms
        pb = Playback(
            epoch=self.epoch,
            sent_ms=round(self.sent_ms, 1),
            played_ms=round(max(0.0, played), 1),
            heard=self.track.heard(played) if interrupted else self.track.text,
            text=self.track.text,
            interrupted=interrupted,
            at=now,
            track=self.track,
            leads=tuple(self._reply_leads),
        )
        self._reply_leads = []
        self.replies.append(pb)
        RECENT.append(pb)
        self.epoch = None
        self.track = SpokenTrack()
        self.sent_ms = 0.0
        self.reported_ms = None
        return pb


__all__ = ["DEFAULT_LEAD_MS", "Pacer", "Playback"]
