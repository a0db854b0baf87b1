"""since= recovery: what a reconnecting client missed, read from history, shared.

When a pod drains or dies, its thousands of clients come back at once on the
survivors, each with a ``since``. Three things made that storm fail (issue 19):
every client read the history stream on its own (fixed earlier by coalescing
concurrent requests into one read), every message of a read was matched
against every request of its batch (a read of 12,000 messages for 1,000
requests: 12 million calls), and every batch read the stream again from the
oldest ``since`` of the batch, minutes of history each time, until reads ran
past their timeout and clients were answered ``recovered: false``.

``Replays`` now keeps a *window*: the stream as read so far, in memory, from
a point in time up to the end of the last read, and the stream offset after
it. The first batch of a storm reads from its oldest ``since``; every later
batch reads only what was published since the previous one (from the saved
offset up to a fresh marker, so it still ends at "now") and is served from
the window. Requests are indexed by user, channel and ``since`` id, so a
message costs a few dict lookups whatever the batch size. A window unused
for ``keep`` seconds is dropped. A read that fails is tried again; a request
is answered ``unavailable`` only after ``timeout`` seconds of trying, and the
session then asks the client to come back (1013) instead of welcoming it
with a gap.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from .broker.base import At, Position
from .message import Envelope, Target, id_timestamp_ms, is_position

log = logging.getLogger("clarion.replays")

#: Reads the stream from a position up to now (or up to the offset ``until``), handing each
#: message over with its offset; returns the offset after the last message read, or None
#: if it could not.
ReadStream = Callable[
    [Position | At, Callable[[Envelope, int], object], float, Position | None],
    Awaitable[Position | None],
]
#: The publish time (ms) of the oldest message history still holds, None if it dropped
#: nothing yet; raises if it cannot tell.
HistoryStart = Callable[[], Awaitable[int | None]]

#: Why a replay is not complete (the ``reason`` of ``recovered: false``).
EXPIRED = "expired"  # since is older than the history window: messages may be lost
UNKNOWN = "unknown"  # inside the window, but no message has that id
UNAVAILABLE = "unavailable"  # the history could not be read

#: Where the history starts when that is unknown: as if it had dropped everything.
DROPPED_ALL = 2**62


def first_reading(seen: set[str], env: Envelope) -> bool:
    """False for a message read before in this read, or a second copy of an idempotent
    publish (its key was read before); the history reader hands some over twice."""
    if env.id in seen or (env.key is not None and env.key in seen):
        return False
    seen.add(env.id)
    if env.key is not None:
        seen.add(env.key)
    return True


def wanted(target: Target, env: Envelope) -> bool:
    """Whether a client interested in ``target`` gets ``env``: a user gets its own
    messages and the broadcasts, a channel its channel's messages."""
    if env.command is not None:
        return False  # an instruction to the pods, never a message for a client
    if target.kind == "user":
        return env.target.kind == "broadcast" or (
            env.target.kind == "user" and env.target.name == target.name
        )
    return env.target.kind == "channel" and env.target.name == target.name


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
    """Picks what a client interested in ``target`` missed out of history read in order.

    Everything after the message ``since``. If ``since`` is a position
    (``protocol.position_id``), everything published from its time on. If
    ``since`` never shows up, the result is what the window holds from
    ``since``'s timestamp on, marked incomplete. Each message is handed over once.
    """

    def __init__(self, since: str, target: Target) -> None:
        self.since = since
        self.since_ts = id_timestamp_ms(since)
        self.target = target
        self.position = is_position(since)
        self.found = self.position
        self.after: list[Envelope] = []
        self.fallback: list[Envelope] = []

    def add(self, env: Envelope) -> None:
        """Any message (``wanted`` decides); the index in ``Replays`` calls ``take``."""
        if env.id == self.since:
            self.found = True
            self.fallback = []
        elif wanted(self.target, env):
            self.take(env)

    def take(self, env: Envelope) -> None:
        """A message this client wants, in stream order."""
        if self.found:
            if not self.position or env.ts >= self.since_ts:
                self.after.append(env)
        elif env.ts >= self.since_ts:
            self.fallback.append(env)

    def result(self, history_start_ms: int | None = DROPPED_ALL) -> Replay:
        """``history_start_ms``: the oldest publish time the history holds if it dropped
        older messages, None if it dropped nothing."""
        inside = history_start_ms is None or history_start_ms <= self.since_ts
        if self.position:
            # Complete unless the history dropped messages after the position.
            if inside:
                return Replay(self.after, complete=True)
            return Replay(self.after, complete=False, reason=EXPIRED)
        if self.found:
            return Replay(self.after, complete=True)
        return Replay(self.fallback, complete=False, reason=UNKNOWN if inside else EXPIRED)


class _Index:
    """The collectors of one batch, by what they want, so a message is matched in O(1)."""

    def __init__(self, collectors: list[ReplayCollector]) -> None:
        self.by_since: dict[str, list[ReplayCollector]] = {}
        self.by_user: dict[str | None, list[ReplayCollector]] = {}
        self.by_channel: dict[str | None, list[ReplayCollector]] = {}
        self.users: list[ReplayCollector] = []
        for c in collectors:
            if not c.position:
                self.by_since.setdefault(c.since, []).append(c)
            if c.target.kind == "user":
                self.users.append(c)
                self.by_user.setdefault(c.target.name, []).append(c)
            else:
                self.by_channel.setdefault(c.target.name, []).append(c)

    def add(self, env: Envelope) -> None:
        found = self.by_since.get(env.id)
        if found is not None:
            for c in found:
                c.found = True
                c.fallback = []
        if env.command is not None:
            return
        kind = env.target.kind
        if kind == "broadcast":
            takers = self.users
        elif kind == "user":
            takers = self.by_user.get(env.target.name, [])
        else:
            takers = self.by_channel.get(env.target.name, [])
        for c in takers:
            if c.since != env.id:  # the message since names itself is not missed
                c.take(env)


@dataclass
class _Request:
    collector: ReplayCollector
    done: asyncio.Future[Replay]
    #: Answered ``unavailable`` if the history cannot be read before this (monotonic).
    deadline: float


def _unexpired(requests: list[_Request]) -> list[_Request]:
    """The requests still waiting that may wait longer; the others are answered
    ``unavailable`` (the session asks its client to come back, 1013)."""
    now = time.monotonic()
    expired = [r for r in requests if now >= r.deadline]
    _give_up(expired)
    return [r for r in requests if not r.done.done()]


def _give_up(requests: list[_Request]) -> None:
    for r in requests:
        if not r.done.done():
            r.done.set_result(Replay([], complete=False, reason=UNAVAILABLE))


class _Window:
    """The stream as read so far: every message published at or after ``from_ms``."""

    def __init__(self, from_ms: int) -> None:
        self.from_ms = from_ms
        self.messages: list[Envelope] = []
        self.seen: set[str] = set()
        #: Where the next read continues (the offset after the last message read), and
        #: the offset of the first message (an older since reads up to it, not past it).
        self.next: Position | None = None
        self.first: Position | None = None
        self.used = time.monotonic()
        #: Where the history started when the window was read (``HistoryStart``).
        self.history_start: int | None = DROPPED_ALL
        self.history_start_known = False

    def add(self, env: Envelope, offset: int) -> None:
        if self.first is None:
            self.first = offset
        if first_reading(self.seen, env):
            self.messages.append(env)

    def prepend(self, older: _Window) -> None:
        """What was read from further back, up to this window's first offset."""
        self.from_ms = older.from_ms
        self.first = older.first if older.first is not None else self.first
        fresh = [e for e in older.messages if first_reading(self.seen, e)]
        self.messages = fresh + self.messages

    def trim(self, max_messages: int) -> None:
        """Forget the oldest messages beyond ``max_messages``.

        Not by age: the window reaches as far back as the replays asked (a client
        idle for minutes comes back with an old ``since``); trimming it by age made
        every such request read the stream again (issue 19).
        """
        drop = len(self.messages) - max_messages
        if drop <= 0:
            return
        msgs = self.messages
        # Everything still here was published at or after the newest time dropped.
        self.from_ms = max(self.from_ms, *(e.ts + 1 for e in msgs[:drop]))
        self.messages = msgs[drop:]
        self.seen = set()
        for env in self.messages:
            first_reading(self.seen, env)


class Replays:
    """Serves every ``since`` replay of one pod, coalescing the concurrent ones."""

    def __init__(
        self,
        read: ReadStream,
        history_start: HistoryStart | None = None,
        timeout: float = 30.0,
        on_read: Callable[[int, float, bool], None] | None = None,
        *,
        read_timeout: float = 10.0,
        keep: float = 30.0,
        max_messages: int = 100_000,
    ) -> None:
        self._read = read
        self._history_start = history_start
        #: How long a request may wait for the history before it is answered ``unavailable``.
        self.timeout = timeout
        #: How long one read of the stream may go without a message before it is tried again.
        self.read_timeout = min(read_timeout, timeout)
        #: Seconds an unused window is kept; how many messages it holds at most.
        self.keep = keep
        self.max_messages = max_messages
        #: Told (requests served, seconds, complete) after each read: the metrics.
        self._on_read = on_read
        self._pending: list[_Request] = []
        self._task: asyncio.Task[None] | None = None
        #: Requests older than the window, waiting for what it lacks to be read.
        self._back: list[_Request] = []
        self._back_task: asyncio.Task[None] | None = None
        self._window: _Window | None = None
        #: Stream reads so far, and how many started from a point in time (a full
        #: read, not continuing the window): the tests check the sharing with them.
        self.reads = 0
        self.full_reads = 0
        #: Reads of what an older ``since`` needed before the window's start.
        self.back_reads = 0

    async def replay(self, since: str, target: Target) -> Replay:
        """Messages after ``since`` that a client interested in ``target`` gets, oldest first."""
        loop = asyncio.get_running_loop()
        request = _Request(
            ReplayCollector(since, target), loop.create_future(), time.monotonic() + self.timeout
        )
        self._queue([request])
        return await asyncio.shield(request.done)

    def _queue(self, requests: list[_Request]) -> None:
        self._pending.extend(requests)
        if self._task is None:
            self._task = asyncio.create_task(self._serve(), name="replays")

    async def _serve(self) -> None:
        delay = 0.1
        try:
            while self._pending:
                await asyncio.sleep(0)  # let the requests of this loop iteration join
                batch, self._pending = self._pending, []
                if await self._serve_batch(batch):
                    delay = 0.1
                    continue
                # The history could not be read: try again, until each request's deadline.
                self._pending.extend(_unexpired(batch))
                if self._pending:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)
        finally:
            self._task = None
            _give_up(self._pending)  # cancelled while waiting: do not leave them hanging
            self._pending = []

    async def _serve_batch(self, batch: list[_Request]) -> bool:
        """Read what the batch needs and answer it; False if the history could not be read."""
        batch = [r for r in batch if not r.done.done()]  # a session that went away
        if not batch:
            return True
        began = time.monotonic()
        start = min(r.collector.since_ts for r in batch)
        window = self._window
        if window is not None and (
            window.next is None
            or began - window.used > self.keep
            or (start < window.from_ms and window.first is None)  # nothing to read up to
        ):
            window = None
        if window is not None and start < window.from_ms:
            # Older than the window: read what it lacks beside this batch, so that one
            # client idle for long does not hold up every other client's welcome.
            older = [r for r in batch if r.collector.since_ts < window.from_ms]
            self._extend_back(older)
            batch = [r for r in batch if r.collector.since_ts >= window.from_ms]
            if not batch:
                return True
            start = min(r.collector.since_ts for r in batch)
        full = window is None
        size = 0 if window is None else len(window.messages)
        try:
            window = await self._extend(window, start)
        except Exception as exc:
            log.warning("history read for %d replays failed: %r", len(batch), exc)
            window = None
        ok = window is not None
        if window is not None:
            log.log(
                logging.INFO if full else logging.DEBUG,
                "history %s read for %d replays: %d messages in %.3fs (window %.1fs back)",
                "full" if full else "incremental",
                len(batch),
                len(window.messages) - size,
                time.monotonic() - began,
                (time.time() * 1000 - window.from_ms) / 1000,
            )
        if self._on_read is not None:
            self._on_read(len(batch), time.monotonic() - began, ok)
        if window is None:
            self._window = None
            return False
        window.used = time.monotonic()
        self._window = window
        index = _Index([r.collector for r in batch])
        for env in window.messages:
            if env.ts >= start - 2000 or env.id in index.by_since:
                index.add(env)
        history_start = await self._start_of(window, batch)
        for r in batch:
            if not r.done.done():
                r.done.set_result(r.collector.result(history_start))
        window.trim(self.max_messages)
        return True

    async def _extend(self, window: _Window | None, start: int) -> _Window | None:
        """The window, read up to now: continued from its offset, or read anew from ``start``."""
        self.reads += 1
        if window is None:
            self.full_reads += 1
            window = _Window(start)
            nxt = await self._read(At(start), window.add, self.read_timeout, None)
        else:
            assert window.next is not None
            nxt = await self._read(window.next, window.add, self.read_timeout, None)
        if nxt is None:
            return None
        window.next = nxt
        return window

    def _extend_back(self, requests: list[_Request]) -> None:
        """Requests older than the window: read what it lacks (from their oldest ``since``
        up to its first offset) in a task of its own, then serve them as any other."""
        self._back.extend(requests)
        if self._back_task is None:
            self._back_task = asyncio.create_task(self._serve_back(), name="replays-back")

    async def _serve_back(self) -> None:
        delay = 0.1
        try:
            while self._back:
                await asyncio.sleep(0)
                requests, self._back = [r for r in self._back if not r.done.done()], []
                window = self._window
                if not requests:
                    continue
                if window is None or window.first is None:
                    self._queue(requests)  # no window to extend: the next read makes one
                    continue
                start = min(r.collector.since_ts for r in requests)
                older = _Window(start)
                began = time.monotonic()
                self.reads += 1
                self.back_reads += 1
                got = await self._read(At(start), older.add, self.read_timeout, window.first)
                if self._on_read is not None:
                    self._on_read(len(requests), time.monotonic() - began, got is not None)
                if got is not None:
                    delay = 0.1
                    if self._window is window:
                        window.prepend(older)
                        log.info(
                            "history read back for %d replays: %d messages in %.3fs "
                            "(window %.1fs back)",
                            len(requests),
                            len(older.messages),
                            time.monotonic() - began,
                            (time.time() * 1000 - window.from_ms) / 1000,
                        )
                    self._queue(requests)  # served from the window by the next read
                    continue
                self._back.extend(_unexpired(requests))
                if self._back:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)
        finally:
            self._back_task = None
            _give_up(self._back)
            self._back = []

    async def _start_of(self, window: _Window, batch: list[_Request]) -> int | None:
        """Where the history begins, asked once per window, and only if a request needs it."""
        if window.history_start_known or self._history_start is None:
            return window.history_start
        if all(r.collector.found and not r.collector.position for r in batch):
            return window.history_start  # not needed
        try:
            window.history_start = await self._history_start()
            window.history_start_known = True
        except Exception as exc:
            log.warning("could not read where the history window starts: %r", exc)
        return window.history_start
