"""After losing the broker, deliver from history what the pod's queue may have lost.

Pod-queue messages are transient (fast confirms): a broker restart, or a
cut-off longer than the queue's TTL or length bound, loses what waited there.
Every message is also in the durable history stream, so before consuming its
queue again the pod reads the stream from before it lost contact; the hub skips
what it already delivered, by id. "Before" reaches back as far as a message can
arrive late: its ``ts`` is set when the API accepts it, and a publish whose
connection died before its confirm is sent again over a new one, up to
``publish_timeout`` later, still to be accepted (RabbitBroker.publish); a read
starting only ``MARGIN_MS`` before the last message consumed missed such a
message (tests/test_catch_up_late.py). If the history cannot be read
(on a cluster that lost its majority the stream takes no marker), the pod
tries again on its next connection, unready meanwhile; only after
``give_up`` seconds does it report a gap (its sockets then recover with
since= themselves).
This policy belongs to no broker in particular: it needs only a way to read
history from a point in time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from ..message import Envelope
from .base import BrokerListener

log = logging.getLogger("clarion.broker")

#: A catch-up reads history from this long, plus how late a message may arrive,
#: before the pod lost contact (clocks, a busy event loop).
MARGIN_MS = 2000

#: Reads history from ``since_ms`` to now, handing each message over; False if it could not.
ReadHistory = Callable[[int, Callable[[Envelope], object], float], Awaitable[bool]]


class CatchUpIncomplete(Exception):
    """The history could not be read yet: try again on a new connection."""


class CatchUp:
    def __init__(self, timeout: float = 30.0, give_up: float = 60.0, late: float = 0.0) -> None:
        self.timeout = timeout
        self.give_up = give_up
        #: How much later than its ``ts`` a message may reach the broker (publish_timeout).
        self.reach_ms = int(late * 1000) + MARGIN_MS
        #: When the pod lost the broker (ms), and the ts of the last message consumed.
        self.lost_at: int | None = None
        self.last_consumed_ms: int | None = None

    def consumed(self, ts_ms: int) -> None:
        self.last_consumed_ms = ts_ms

    def lost(self) -> None:
        self.lost_at = int(time.time() * 1000)

    async def run(self, read: ReadHistory, listener: BrokerListener) -> None:
        """Catch up if contact was lost since the last run; report a gap if it failed."""
        if self.lost_at is None:
            return
        since = min(self.lost_at, self.last_consumed_ms or self.lost_at) - self.reach_ms
        caught = 0

        def deliver(env: Envelope) -> None:
            nonlocal caught
            if env.ts >= since:
                caught += 1
                listener.on_message(env, True)

        ok = await read(since, deliver, self.timeout)
        log.info("caught up %d messages from history after reconnecting (complete: %s)", caught, ok)
        if not ok:
            if time.time() * 1000 - self.lost_at < self.give_up * 1000:
                raise CatchUpIncomplete(f"could not read the history since {since} yet")
            listener.on_gap()
        self.lost_at = None
