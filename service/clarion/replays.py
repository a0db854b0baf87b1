"""since= recovery: what a reconnecting client missed, read from history, shared.

When a pod dies, its thousands of clients come back at once on the survivors,
each with a ``since``. Reading the history stream once per client made the
work and the memory grow as clients times messages: 20 concurrent replays of 6,000
messages ran past their timeout (``recovered: false`` for all) and left a pod
65 MiB larger. ``Replays`` coalesces them: the requests that arrive while one
read runs are served together by the next, one read from the oldest ``since``
of the batch, every message handed to each request's collector (the same
envelope object for all of them).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from .protocol import Envelope, id_timestamp_ms

log = logging.getLogger("clarion.replays")

#: Reads history from ``since_ms`` up to now, handing each message over; False if it could not.
ReadHistory = Callable[[int, Callable[[Envelope], object], float], Awaitable[bool]]
#: The publish time (ms) of the oldest message history still holds, None if empty or unknown.
HistoryStart = Callable[[], Awaitable[int | None]]

#: Why a replay is not complete (the ``reason`` of ``recovered: false``).
EXPIRED = "expired"  # since is older than the history window: messages may be lost
UNKNOWN = "unknown"  # inside the window, but no message has that id
UNAVAILABLE = "unavailable"  # the history could not be read


def first_reading(seen: set[str], env: Envelope) -> bool:
    """False for a message read before in this read, or a second copy of an idempotent
    publish (its key was read before); the history reader hands some over twice."""
    if env.id in seen or (env.key is not None and env.key in seen):
        return False
    seen.add(env.id)
    if env.key is not None:
        seen.add(env.key)
    return True


@dataclass
class Replay:
    """What a reconnecting client missed, oldest first.

    ``complete`` is False when ``since`` is not in the history (``reason`` says
    why) or the history could not be read: then ``messages`` holds what the
    window has from ``since``'s timestamp on, and the client may have lost
    something.
    """

    messages: list[Envelope] = field(default_factory=list)
    complete: bool = True
    reason: str | None = None


class ReplayCollector:
    """Picks what a client missed out of history read in stream order.

    Everything after the message ``since`` that ``match`` accepts. If ``since``
    never shows up, the result is what the window holds from ``since``'s
    timestamp on, marked incomplete. The reader hands each message over once.
    """

    def __init__(self, since: str, match: Callable[[Envelope], bool]) -> None:
        self.since = since
        self.since_ts = id_timestamp_ms(since)
        self.match = match
        self.found = False
        self.after: list[Envelope] = []
        self.fallback: list[Envelope] = []

    def add(self, env: Envelope) -> None:
        if env.command is not None:
            return  # an instruction to the pods, never a message for a client
        if self.found:
            if self.match(env):
                self.after.append(env)
        elif env.id == self.since:
            self.found = True
            self.fallback = []
        elif env.ts >= self.since_ts and self.match(env):
            self.fallback.append(env)

    def result(self, history_start_ms: int | None = None) -> Replay:
        if self.found:
            return Replay(self.after, complete=True)
        inside = history_start_ms is not None and history_start_ms <= self.since_ts
        return Replay(self.fallback, complete=False, reason=UNKNOWN if inside else EXPIRED)


@dataclass
class _Request:
    collector: ReplayCollector
    done: asyncio.Future[Replay]


class Replays:
    """Serves every ``since`` replay of one pod, coalescing the concurrent ones."""

    def __init__(
        self,
        read: ReadHistory,
        history_start: HistoryStart | None = None,
        timeout: float = 10.0,
        on_read: Callable[[int, float, bool], None] | None = None,
    ) -> None:
        self._read = read
        self._history_start = history_start
        self.timeout = timeout
        #: Told (requests served, seconds, complete) after each read: the metrics.
        self._on_read = on_read
        self._pending: list[_Request] = []
        self._task: asyncio.Task[None] | None = None
        #: History reads so far (the tests check the coalescing with it).
        self.reads = 0

    async def replay(self, since: str, match: Callable[[Envelope], bool]) -> Replay:
        """Messages after the message ``since`` that ``match`` accepts, oldest first."""
        request = _Request(
            ReplayCollector(since, match), asyncio.get_running_loop().create_future()
        )
        self._pending.append(request)
        if self._task is None:
            self._task = asyncio.create_task(self._serve(), name="replays")
        return await asyncio.shield(request.done)

    async def _serve(self) -> None:
        try:
            while self._pending:
                await asyncio.sleep(0)  # let the requests of this loop iteration join
                batch, self._pending = self._pending, []
                await self._serve_batch(batch)
        finally:
            self._task = None
            for request in self._pending:  # cancelled while waiting: do not leave them hanging
                if not request.done.done():
                    request.done.set_result(Replay([], complete=False, reason=UNAVAILABLE))
            self._pending = []

    async def _serve_batch(self, batch: list[_Request]) -> None:
        start = min(r.collector.since_ts for r in batch)
        collectors = [r.collector for r in batch]
        seen: set[str] = set()  # once per read, not per client: the ids are many

        def each(env: Envelope) -> None:
            if not first_reading(seen, env):
                return
            for collector in collectors:
                collector.add(env)

        began = time.monotonic()
        try:
            ok = await self._read(start, each, self.timeout)
        except Exception:
            log.exception("history read for %d replays failed", len(batch))
            ok = False
        history_start: int | None = None
        if ok and self._history_start is not None and not all(c.found for c in collectors):
            try:
                history_start = await self._history_start()
            except Exception as exc:
                log.warning("could not read where the history window starts: %r", exc)
        for r in batch:
            if r.done.done():
                continue
            if ok:
                r.done.set_result(r.collector.result(history_start))
            else:
                r.done.set_result(Replay([], complete=False, reason=UNAVAILABLE))
        if self._on_read is not None:
            self._on_read(len(batch), time.monotonic() - began, ok)
