"""One socket's outgoing side: the bounded buffer, write batching, overflow.

Fan-out never awaits a client. While nothing is in flight a frame is written
at once; pre-built frames pushed during one event-loop iteration are gathered
and written in one go when the hub flushes them. Only when a send has to wait
(the client reads slowly) does a task take over and drain the buffer; a
buffer over its bounds (messages or bytes) overflows: the socket is closed
1013 and its pending messages are counted as dropped (``slow_client``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from .frames import Kind, Outgoing
from .metrics import Metrics
from .transport import Transport

log = logging.getLogger("clarion.writer")

#: How long a server-side close may wait for its close frame to go out.
CLOSE_TIMEOUT = 5.0


class SocketWriter:
    __slots__ = (
        "_buf",
        "_buf_bytes",
        "_direct",
        "_gathered",
        "_task",
        "closed",
        "dirty",
        "max_bytes",
        "max_messages",
        "metrics",
        "on_overflow",
        "transport",
    )

    def __init__(
        self,
        transport: Transport,
        metrics: Metrics,
        max_messages: int = 1000,
        max_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        self.transport = transport
        self.metrics = metrics
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        #: Nothing more is written (closed by the server, or the socket is gone).
        self.closed = False
        # Created on first need: most sockets never have a backlog.
        self._buf: deque[Outgoing] | None = None
        self._buf_bytes = 0
        self._task: asyncio.Task[None] | None = None
        #: Pre-built frames waiting for the hub's end-of-iteration flush.
        self._gathered: list[Outgoing] | None = None
        #: The last flush wrote directly (push then leaves the check to the flush).
        self._direct = False
        #: The hub's list of writers to flush at the end of the iteration (None:
        #: flush at once); the hub schedules that flush after each message.
        self.dirty: list[SocketWriter] | None = None
        #: Called with the number of messages lost when the buffer overflows.
        self.on_overflow: Callable[[int], None] | None = None

    @property
    def backlog(self) -> int:
        return len(self._buf) if self._buf else 0

    def push(self, out: Outgoing) -> bool:
        """Queue a live message without waiting; False if closed or overflowed.

        A pre-built frame is gathered for the hub's end-of-iteration flush when the
        transport can take one. The flush checks the transport (it may have changed
        state meanwhile: then the ordinary path, in order), so a socket whose last
        flush wrote directly is not checked here again, nor is a frame that joins
        others of the same iteration.
        """
        gathered = self._gathered
        if gathered is not None:
            gathered.append(out)
            return True
        if (
            out.frame is not None
            and self._task is None
            and not self.closed
            and (self._direct or self.transport.can_write_frames())
        ):
            self._gathered = [out]
            dirty = self.dirty
            if dirty is None:
                self.metrics.deliveries.count += self.flush()
            else:
                dirty.append(self)
            return True
        return self.send(out)

    def flush(self) -> int:
        """Write the gathered pre-built frames joined into one write; how many went out
        that way (the caller counts them as delivered: the hub once per iteration).
        0 when they went the ordinary way (counted as they are sent) or nowhere."""
        gathered, self._gathered = self._gathered, None
        if not gathered or self.closed:
            return 0
        transport = self.transport
        if self._task is None and transport.can_write_frames():
            n = len(gathered)
            transport.write_frames(transport.frame_bytes(gathered), n)
            self._direct = True
            return n
        # The socket changed state since: the ordinary path, in order.
        self._direct = False
        for out in gathered:
            if not self.send(out):
                break
        return 0

    def send(self, out: Outgoing) -> bool:
        """Send through the transport, or buffer behind a send in flight."""
        if self.closed:
            return False
        if self._gathered:
            # Frames gathered earlier go first (only live messages are gathered;
            # their latency is the hub's).
            self.metrics.deliveries.count += self.flush()
            if self.closed:
                return False
        if self._task is None:
            return self._send_now(out)
        buf = self._buf
        if buf is None:
            buf = self._buf = deque()
        # One message larger than the byte bound is still taken into an empty
        # buffer: only a backlog marks a slow client.
        if len(buf) >= self.max_messages or (buf and self._buf_bytes + out.nbytes > self.max_bytes):
            return self.overflow(len(buf) + 1)
        buf.append(out)
        self._buf_bytes += out.nbytes
        return True

    def overflow(self, dropped: int) -> bool:
        self.metrics.dropped.labels(reason="slow_client").inc(dropped)
        self._buf = None
        self._buf_bytes = 0
        if self.on_overflow is not None:
            self.on_overflow(dropped)
        return False

    def _sent(self, out: Outgoing) -> None:
        # A plain int read at scrape time; the latency is observed once per
        # message by the hub (metrics.Deliveries), not per socket.
        if out.kind is not Kind.CONTROL:
            self.metrics.deliveries.count += 1

    def _send_now(self, out: Outgoing) -> bool:
        try:
            pending = self.transport.send_now(out)
        except Exception as exc:
            # The socket is gone; its receive loop sees the disconnect.
            log.debug("send failed: %s", exc)
            self.closed = True
            return False
        if pending is None:
            self._sent(out)
            return True
        # The send has to wait: a task finishes it, then drains what is pushed
        # meanwhile, in order.
        self._task = asyncio.ensure_future(self._drain(pending, out))
        return True

    async def _drain(self, pending: Awaitable[None], first: Outgoing) -> None:
        try:
            await pending
            self._sent(first)
            buf = self._buf
            while buf:
                out = buf.popleft()
                self._buf_bytes -= out.nbytes
                await self.transport.send(out)
                self._sent(out)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.debug("writer stopped: %s", exc)
            self.closed = True
        finally:
            self._task = None

    def close(self, code: int, reason: str) -> None:
        """Stop writing and send a close frame (in the background, bounded)."""
        if self.closed:
            return
        self.closed = True
        self._gathered = None
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()
        task = asyncio.ensure_future(self._send_close(code, reason))
        task.add_done_callback(_consume_result)

    async def _send_close(self, code: int, reason: str) -> None:
        try:
            await asyncio.wait_for(self.transport.close(code, reason), CLOSE_TIMEOUT)
        except TimeoutError:
            # The client reads nothing (the close frame waits behind unread data):
            # reset the connection, so it fails at once on the client's side too.
            log.info("close frame not sent in %.0fs: connection reset", CLOSE_TIMEOUT)
            self.transport.abort()
        except Exception as exc:
            log.debug("close failed: %s", exc)

    async def stop(self) -> None:
        """Wait for nothing more: cancel a send in flight (the session is over)."""
        self.closed = True
        task = self._task
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def _consume_result(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()
