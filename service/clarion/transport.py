"""The one seam between a socket's writer and the server under it.

``AsgiTransport`` works on any ASGI server. ``UvicornTransport`` is the fast
path, and the only code in Clarion allowed to touch uvicorn's private
sans-I/O internals: it writes pre-built frames straight to the asyncio
transport (one write per socket per event-loop iteration, no per-socket
encoding), and it finishes an ASGI ``send`` without a task whenever uvicorn
can complete it synchronously. It needs uvicorn >= 0.52.1 (the first release
whose ``WebSocketsSansIOProtocol`` has every attribute it reads), and pyproject.toml
pins uvicorn below the first version it was not tested with; ``tests/test_fast_path.py``
fails if a real uvicorn process stops using it, or if the installed uvicorn is outside
that range. How often each path wrote shows in
``clarion_socket_writes_total{path}`` (``frame``, ``direct``, ``asgi``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

from websockets.protocol import State

from .frames import Outgoing

log = logging.getLogger("clarion.transport")

#: Sends one ASGI message on the socket.
Send = Callable[[dict[str, Any]], Awaitable[None]]


class WriteCounts:
    """Frames written per path, read by the metrics at scrape time (no per-write metric cost).

    ``frame``: a pre-built frame written to the transport (uvicorn fast path);
    ``direct``: an ASGI send uvicorn completed at once (no task); ``asgi``: an
    ASGI send that was awaited.
    """

    __slots__ = ("asgi", "direct", "frame")

    def __init__(self) -> None:
        self.frame = 0
        self.direct = 0
        self.asgi = 0


class Transport(Protocol):
    def can_write_frames(self) -> bool:
        """Pre-built frames can be written synchronously right now."""

    def frame_bytes(self, outs: list[Outgoing]) -> bytes:
        """Live messages (``out.frame`` set) as this transport writes them, joined."""

    def write_frames(self, data: bytes, count: int) -> None:
        """Write ``count`` pre-built frames joined in ``data``."""

    def send_now(self, out: Outgoing) -> Awaitable[None] | None:
        """Start sending ``out``: None when it went out at once, else what finishes it.

        Raises when the socket is gone.
        """

    async def send(self, out: Outgoing) -> None: ...

    async def close(self, code: int, reason: str) -> None: ...

    def abort(self) -> None:
        """Drop the connection at once (a TCP reset where the server allows it)."""


class AsgiTransport:
    """Plain ASGI: every send is awaited (a writer task does it)."""

    __slots__ = ("_send", "counts")

    def __init__(self, send: Send, counts: WriteCounts) -> None:
        self._send = send
        self.counts = counts

    def can_write_frames(self) -> bool:
        return False

    def frame_bytes(self, outs: list[Outgoing]) -> bytes:
        """The WebSocket frames built once per message for every socket."""
        if len(outs) == 1:
            return outs[0].frame  # type: ignore[return-value]
        return b"".join([out.frame for out in outs])  # type: ignore[misc]

    def write_frames(self, data: bytes, count: int) -> None:  # pragma: no cover - never called
        raise RuntimeError("plain ASGI cannot write pre-built frames")

    def send_now(self, out: Outgoing) -> Awaitable[None] | None:
        return self.send(out)

    async def send(self, out: Outgoing) -> None:
        self.counts.asgi += 1
        await self._send({"type": "websocket.send", "text": out.text})

    async def close(self, code: int, reason: str) -> None:
        await self._send({"type": "websocket.close", "code": code, "reason": reason})

    def abort(self) -> None:
        """Plain ASGI has no way to reset a connection: the server's own timeouts end it."""


class UvicornTransport(AsgiTransport):
    """uvicorn's websockets-sansio protocol, written to directly."""

    __slots__ = ("_proto", "_raw_frames")

    def __init__(self, send: Send, counts: WriteCounts, proto: Any, raw_frames: bool) -> None:
        super().__init__(send, counts)
        self._proto = proto
        #: Off with per-message deflate: pre-built frames are uncompressed.
        self._raw_frames = raw_frames

    def can_write_frames(self) -> bool:
        return self._raw_frames and frames_ok_now(self._proto)

    def write_frames(self, data: bytes, count: int) -> None:
        self._proto.transport.write(data)
        self.counts.frame += count

    def abort(self) -> None:
        reset(self._proto.transport)

    def send_now(self, out: Outgoing) -> Awaitable[None] | None:
        message = {"type": "websocket.send", "text": out.text}
        return step(self._send(message), self.counts)  # type: ignore[arg-type]


class KeptFlagTransport(UvicornTransport):
    """On Clarion's own protocol class (``websocket_protocol``), which keeps whether
    pre-built frames can be written (``frames_ok_now``) in this object's ``ok``, up to
    date wherever its state changes: the fan-out then reads one attribute of this
    object per socket, and writes to the asyncio transport, without touching the
    protocol, its writable flag or websockets' state (three objects, cold in the cache
    at thousands of sockets). Only without compression (raw frames)."""

    __slots__ = ("_raw", "ok")

    def __init__(self, send: Send, counts: WriteCounts, proto: Any) -> None:
        super().__init__(send, counts, proto, True)
        self._raw = proto.transport
        self.ok = frames_ok_now(proto)
        if not proto.disconnected:  # else nothing would let go of it (connection_lost)
            proto.frames_sink = self

    def can_write_frames(self) -> bool:
        return self.ok

    def write_frames(self, data: bytes, count: int) -> None:
        self._raw.write(data)
        self.counts.frame += count


def chunk(body: bytes) -> bytes:
    """``body`` as one chunk of a chunked HTTP/1.1 response body."""
    return b"%x\r\n%b\r\n" % (len(body), body)


class HttpBody:
    """A streamed (chunked) response body of uvicorn's httptools protocol, written to
    directly: a stream's live messages go out as WebSocket frames do, one write per
    connection per event-loop iteration, without an ASGI send each."""

    __slots__ = ("_cycle",)

    def __init__(self, cycle: Any) -> None:
        self._cycle = cycle

    def writable(self) -> bool:
        c = self._cycle
        return (
            c.chunked_encoding is True
            and not c.response_complete
            and not c.disconnected
            and not c.flow.write_paused
        )

    def write(self, data: bytes) -> None:
        """Write chunks (``chunk``) as they are."""
        self._cycle.transport.write(data)


def _httptools_cycle_class() -> type | None:
    try:
        from uvicorn.protocols.http.httptools_impl import RequestResponseCycle
    except ImportError:  # pragma: no cover - no httptools, or another server
        return None
    return RequestResponseCycle


_HTTPTOOLS_CYCLE = _httptools_cycle_class()


def http_body(send: Send) -> HttpBody | None:
    """The direct writer under an ASGI ``send`` of a response (None but on uvicorn's
    httptools protocol: the ASGI send is then the only way)."""
    cycle = getattr(send, "__self__", None)
    if _HTTPTOOLS_CYCLE is None or not isinstance(cycle, _HTTPTOOLS_CYCLE):
        return None
    return HttpBody(cycle)


def reset(transport: Any) -> None:
    """Drop a connection with a TCP reset where possible."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # Linger 0: a reset, not a FIN behind the unsent data (a browser whose
        # reading stalled then notices at once).
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def step(coro: Coroutine[Any, Any, None], counts: WriteCounts) -> Awaitable[None] | None:
    """Run an ASGI ``send`` coroutine by hand: None when it completed at once, else what
    finishes it. On uvicorn a send (WebSocket or HTTP body) completes without suspending
    whenever the transport is writable, so no task is needed."""
    try:
        waiting = coro.send(None)
    except StopIteration:
        counts.direct += 1
        return None
    return _finish(coro, waiting, counts)


async def _finish(coro: Coroutine[Any, Any, None], waiting: Any, counts: WriteCounts) -> None:
    """Drive a send that had to wait (transport paused) as a Task would."""
    while True:
        try:
            if waiting is None:
                await asyncio.sleep(0)
            else:
                # What a Task does with a yielded future: clear the flag the
                # future set when the coroutine yielded it, then wait here.
                waiting._asyncio_future_blocking = False
                await waiting
        except asyncio.CancelledError:
            coro.close()
            raise
        except Exception:
            pass  # the coroutine sees the same outcome when resumed
        try:
            waiting = coro.send(None)
        except StopIteration:
            counts.asgi += 1
            return


def _uvicorn_protocol_class() -> type | None:
    try:
        from uvicorn.protocols.websockets.websockets_sansio_impl import (
            WebSocketsSansIOProtocol,
        )
    except ImportError:  # pragma: no cover - another server, or an older uvicorn
        return None
    return WebSocketsSansIOProtocol


_UVICORN = _uvicorn_protocol_class()


class _Waiters:
    """Futures of the coroutines waiting on an object, made only while one waits."""

    __slots__ = ("_waiters",)

    def __init__(self) -> None:
        self._waiters: list[asyncio.Future[None]] | None = None

    def _waiter(self) -> asyncio.Future[None]:
        """A future for one more waiter, woken by ``_wake``; ``_forget`` it after."""
        fut = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = [fut]
        else:
            self._waiters.append(fut)
        return fut

    def _forget(self, fut: asyncio.Future[None]) -> None:
        waiters = self._waiters
        if waiters is not None:
            waiters.remove(fut)
            if not waiters:
                self._waiters = None

    def _wake(self, count: int | None = None) -> None:
        """Wake ``count`` waiters, the longest waiting first (None: all)."""
        for fut in self._waiters or ():
            if not fut.done():
                fut.set_result(None)
                if count is not None:
                    count -= 1
                    if not count:
                        return


class Inbox(_Waiters):
    """uvicorn's receive queue with ``asyncio.Queue``'s behaviour for what uvicorn asks of
    it (``put_nowait``, ``get``, ``empty``), without its three deques and its Event (about
    3 KiB per socket, held for the socket's life): a list made on the first message, and
    a future only while a reader waits."""

    __slots__ = ("_items",)

    def __init__(self) -> None:
        super().__init__()
        self._items: list[Any] | None = None

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items) if self._items else 0

    def put_nowait(self, item: Any) -> None:
        if self._items is None:
            self._items = [item]
        else:
            self._items.append(item)
        self._wake(1)

    async def get(self) -> Any:
        # Awaits the future itself (no helper coroutine): this frame is held by every
        # idle socket.
        while not self._items:
            fut = self._waiter()
            try:
                await fut
            except BaseException:
                if fut.done() and not fut.cancelled():
                    self._wake(1)  # cancelled after it was woken: the next reader's
                fut.cancel()
                raise
            finally:
                self._forget(fut)
        items = self._items
        item = items.pop(0)
        if not items:
            self._items = None  # most sockets get a message now and then: no list between
        return item


class Writable(_Waiters):
    """uvicorn's ``writable`` flag with ``asyncio.Event``'s behaviour, without its deque
    (760 B per socket): a waiter is made only while the transport is paused."""

    __slots__ = ("_set",)

    def __init__(self) -> None:
        super().__init__()
        self._set = True

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        if not self._set:
            self._set = True
            self._wake()

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> bool:
        if self._set:
            return True  # without suspending, which ``step`` relies on
        fut = self._waiter()
        try:
            await fut
        finally:
            self._forget(fut)
        return True


def frames_ok_now(p: Any) -> bool:
    """Whether pre-built frames can be written to uvicorn's protocol ``p`` right now: the
    handshake is done, no close frame was sent or received, the connection is up and its
    transport is not paused."""
    return bool(
        p.handshake_complete
        and not p.close_sent
        and not p.disconnected
        and p.writable.is_set()
        and p.conn.state is State.OPEN
    )


#: The methods of uvicorn's protocol through which what ``frames_ok_now`` reads changes
#: (called from outside it: by the event loop, the transport, the app, the server or a
#: timer). Clarion's protocol tells its ``KeptFlagTransport`` after each;
#: tests/test_fast_path.py fails if uvicorn's class gains a method not reviewed for this.
KEPT_BY = (
    "data_received",
    "send",
    "connection_lost",
    "pause_writing",
    "resume_writing",
    "shutdown",
    "keepalive_timeout",
)


def websocket_protocol() -> type | str:
    """The ``ws`` implementation Clarion runs uvicorn with (server.py)."""
    if _UVICORN is None:  # pragma: no cover
        return "websockets-sansio"

    class ClarionWebSocketProtocol(_UVICORN):  # type: ignore[valid-type,misc]
        """uvicorn's websockets-sansio protocol, lighter, answering handshakes it cannot
        parse.

        Lighter: an idle socket is held for hours, so what it keeps is paid per socket
        (docs/performance.md, "Memory per idle socket"). Its receive queue and its
        writable flag are ``Inbox`` and ``Writable``; ``release_handshake`` drops what
        only the handshake needed.

        Cheaper to write to: it tells the socket's ``KeptFlagTransport`` whether
        pre-built frames can be written wherever that can change (``KEPT_BY``), so the
        fan-out reads one flag per socket instead of the protocol's state.

        Handshakes: websockets refuses a request line or header over its limits (414,
        431) by queueing the response and no event, and uvicorn writes only after
        events: the client waited on an open socket until it gave up. Here the queued
        answer is written and the socket closed at once.
        """

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.queue = Inbox()
            self.writable = Writable()
            #: The fast transport of this socket (``KeptFlagTransport``), told whether
            #: pre-built frames can be written (``frames_ok_now``) after every method
            #: through which that can change (``KEPT_BY``): the fan-out reads one
            #: attribute of it per socket.
            self.frames_sink: KeptFlagTransport | None = None

        def _update(self) -> None:
            sink = self.frames_sink
            if sink is not None:
                sink.ok = frames_ok_now(self)

        def data_received(self, data: bytes) -> None:
            try:
                super().data_received(data)
                if (
                    not self.handshake_initiated
                    and self.conn.handshake_exc is not None
                    and not self.transport.is_closing()
                ):
                    self.transport.write(b"".join(self.conn.data_to_send()))
                    self.close_sent = True
                    self.transport.close()
            finally:
                self._update()

        async def send(self, message: Any) -> None:
            try:
                await super().send(message)
            finally:
                self._update()

        def connection_lost(self, exc: Exception | None) -> None:
            try:
                super().connection_lost(exc)
            finally:
                self._update()
                self.frames_sink = None  # no cycle left to the garbage collector

        def pause_writing(self) -> None:
            super().pause_writing()
            self._update()

        def resume_writing(self) -> None:
            super().resume_writing()
            self._update()

        def shutdown(self) -> None:
            try:
                super().shutdown()
            finally:
                self._update()

        def keepalive_timeout(self) -> None:
            try:
                super().keepalive_timeout()
            finally:
                self._update()

        def release_handshake(self) -> None:
            """Drop what only the handshake needed, once the socket is accepted: the
            parsed request and the response (uvicorn reads them only until the accept)
            and the request headers in the ASGI scope (the app read them at admission;
            a browser's, cookies and all, are often over a kilobyte)."""
            if not self.handshake_complete:
                return
            request = getattr(self, "request", None)  # uvicorn sets it untyped
            self.request = self.response = None
            if request is not None:
                # websockets' parser keeps the request in its generator's frame.
                request.headers.clear()
            self.scope["headers"] = []

    return ClarionWebSocketProtocol


def release_handshake(send: Send) -> None:
    """After the accept: the server may drop what only the handshake needed (the request
    headers in the scope among them: read them before). Only Clarion's uvicorn protocol
    does; elsewhere nothing happens."""
    release = getattr(getattr(send, "__self__", None), "release_handshake", None)
    if release is not None:
        release()


def transport_for(send: Send, counts: WriteCounts, *, raw_frames: bool = True) -> Transport:
    """The fastest transport that fits the server behind ``send``."""
    proto = getattr(send, "__self__", None)
    if _UVICORN is not None and isinstance(proto, _UVICORN):
        if raw_frames and hasattr(proto, "frames_sink"):
            return KeptFlagTransport(send, counts, proto)
        return UvicornTransport(send, counts, proto, raw_frames)
    return AsgiTransport(send, counts)
