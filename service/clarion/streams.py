"""HTTP streams for networks that block WebSocket: Server-Sent Events and NDJSON.

``GET /sse`` (``text/event-stream``, for ``EventSource``) and ``GET /stream``
(newline-delimited JSON, for ``fetch`` streaming and ``curl -N``) carry the
frames a WebSocket would, in the same order, through the same session
(session.py: identity, welcome, ``since`` replay, subscriptions) and the same
bounded writer (writer.py): only the bytes on the wire differ. An SSE
message event's ``id:`` is the message id, and the welcome's is where the
client resumes, so the browser's reconnect (``Last-Event-ID``) replays
exactly what it missed. A close becomes a last ``close`` frame naming the
code, the reason and what to do, with ``retry:``. The client's own frames
come in by ``POST /emulation`` (emulation.py), on any pod.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Awaitable
from typing import Any

import orjson
from starlette.datastructures import Headers, QueryParams
from starlette.types import Receive, Scope, Send
from websockets.http11 import MAX_LINE_LENGTH, MAX_NUM_HEADERS

from . import disconnects
from .api import _read_body
from .auth import Identity
from .disconnects import Disconnect
from .emulation import parse_frames
from .frames import Kind, Outgoing
from .gateway import Gateway
from .hub import Connection
from .protocol import ProtocolError, encode, parse_client_frame
from .session import Session, admit, origin_allowed
from .transport import WriteCounts, chunk, http_body, reset, step
from .writer import SocketWriter

log = logging.getLogger("clarion.streams")

#: Sent through the writer when a stream was idle for ``--stream-keepalive`` seconds.
KEEPALIVE = Outgoing("", 0, Kind.CONTROL)
#: Client frames a stream may have waiting (posted, not yet run).
INBOX = 200
#: Live messages whose encoded bytes a format keeps for the streams of a fan-out.
RECENT = 64


def close_frame(code: int, reason: str) -> dict[str, Any]:
    """The last frame of a stream: what closed it, and what the client does now.

    ``retry`` (ms) is jittered: soon for a drain or a rebalance, at least 2 s
    for an overload; ``reconnect`` is false where reconnecting cannot help.
    """
    stop = code in (1008, 1009) or code >= 4500
    if stop:
        retry = 0
    elif code in (1011, 1013):
        retry = random.randint(2000, 5000)
    else:
        retry = random.randint(200, 2000)
    return {
        "type": "close",
        "code": code,
        "reason": reason,
        "reconnect": not stop,
        "action": disconnects.action_for(code, reason),
        "retry": retry,
    }


class Format:
    """How frames are written on one kind of stream (one instance per pod)."""

    name = ""
    media_type = b""

    def __init__(self) -> None:
        # The live messages encoded lately (by record: id(out) -> [out, event, chunk]):
        # every stream of a fan-out shares their bytes, also when a stream writes several
        # of them at once.
        self._recent: dict[int, list[Any]] = {}

    def _entry(self, out: Outgoing) -> list[Any]:
        entry = self._recent.get(id(out))
        if entry is None or entry[0] is not out:
            entry = self._recent[id(out)] = [out, self.event(out.text, out.id), None]
            if len(self._recent) > RECENT:
                del self._recent[next(iter(self._recent))]
        return entry

    def encode(self, out: Outgoing) -> bytes:
        if out.frame is None:  # control and replayed frames are per connection
            return self.event(out.text, out.id)
        event: bytes = self._entry(out)[1]
        return event

    def chunks(self, outs: list[Outgoing]) -> bytes:
        """Live messages as one chunk of the response body (transport.chunk)."""
        if len(outs) > 1:
            return chunk(b"".join([self.encode(out) for out in outs]))
        entry = self._entry(outs[0])
        if entry[2] is None:
            entry[2] = chunk(entry[1])
        framed: bytes = entry[2]
        return framed

    def event(self, text: str, mid: str | None) -> bytes:
        raise NotImplementedError

    def close(self, code: int, reason: str) -> bytes:
        raise NotImplementedError


class EventStream(Format):
    """``text/event-stream``: ``id:`` is the message id, so ``Last-Event-ID`` resumes."""

    name = "sse"
    media_type = b"text/event-stream; charset=utf-8"

    def event(self, text: str, mid: str | None, retry: int = 0) -> bytes:
        if not text:
            return b": keep-alive\n\n"
        head = f"retry: {retry}\n" if retry else ""
        if mid is not None:
            head += f"id: {mid}\n"
        if "\n" in text or "\r" in text:
            text = "\ndata: ".join(text.splitlines())
        return f"{head}data: {text}\n\n".encode()

    def close(self, code: int, reason: str) -> bytes:
        frame = close_frame(code, reason)
        return self.event(encode(frame), None, frame["retry"] or 86_400_000)


class JsonLines(Format):
    """``application/x-ndjson``: one frame per line (an empty line keeps it alive)."""

    name = "http_stream"
    media_type = b"application/x-ndjson"

    def event(self, text: str, mid: str | None) -> bytes:
        if not text:
            return b"\n"
        if text[0] != "{":  # bare text (``pong``): a JSON string, so every line is JSON
            return orjson.dumps(text) + b"\n"
        return f"{text}\n".encode()

    def close(self, code: int, reason: str) -> bytes:
        return self.event(encode(close_frame(code, reason)), None)


class StreamTransport:
    """The writer's seam (transport.Transport) over a streamed HTTP response."""

    __slots__ = ("_direct", "_send", "counts", "fmt")

    def __init__(self, send: Send, counts: WriteCounts, fmt: Format) -> None:
        self._send = send
        self.counts = counts
        self.fmt = fmt
        #: Live messages are written to the response's socket directly where uvicorn's
        #: httptools protocol serves it (the ASGI send elsewhere).
        self._direct = http_body(send)

    def can_write_frames(self) -> bool:
        return self._direct is not None and self._direct.writable()

    def frame_bytes(self, outs: list[Outgoing]) -> bytes:
        return self.fmt.chunks(outs)

    def write_frames(self, data: bytes, count: int) -> None:
        self._direct.write(data)  # type: ignore[union-attr]
        self.counts.frame += count

    def _body(self, body: bytes, more: bool = True) -> Any:
        return self._send({"type": "http.response.body", "body": body, "more_body": more})

    def send_now(self, out: Outgoing) -> Awaitable[None] | None:
        return step(self._body(self.fmt.encode(out)), self.counts)

    async def send(self, out: Outgoing) -> None:
        self.counts.asgi += 1
        await self._body(self.fmt.encode(out))

    async def close(self, code: int, reason: str) -> None:
        await self._body(self.fmt.close(code, reason), more=False)

    def abort(self) -> None:
        transport = getattr(getattr(self._send, "__self__", None), "transport", None)
        if transport is not None:
            reset(transport)


class StreamSession(Session):
    """A session whose client frames are posted (emulation.py), not read from its connection."""

    def __init__(self, gw: Gateway, conn: Connection, ident: Identity, fmt: Format) -> None:
        super().__init__(gw, conn, ident)
        self.fmt = fmt
        self.transport = fmt.name
        self.inbox: deque[str] = deque()
        self.wake = asyncio.Event()

    # emulation.Inbox
    @property
    def user(self) -> str:
        return self.conn.user

    @property
    def open(self) -> bool:
        return not self.conn.closing

    def post(self, frames: list[str]) -> bool:
        if len(self.inbox) + len(frames) > INBOX:
            return False
        self.inbox.extend(frames)
        self.wake.set()
        return True

    def welcome_fields(self) -> dict[str, Any]:
        token = self.gw.emulation.token(self.conn.id, self.conn.user)
        return {"transport": self.fmt.name, "session": token}

    async def serve(self, receive: Receive) -> Disconnect:
        """Run posted frames, keep the stream alive, until the client goes (or the
        response ends: the server closed it)."""
        gone = asyncio.ensure_future(_disconnected(receive))
        keepalive = self.gw.settings.stream_keepalive or None
        try:
            while not gone.done():
                while self.inbox:
                    await self.on_frame(self.inbox.popleft())
                self.wake.clear()
                woken = asyncio.ensure_future(self.wake.wait())
                done, _ = await asyncio.wait(
                    (gone, woken), timeout=keepalive, return_when=asyncio.FIRST_COMPLETED
                )
                woken.cancel()
                if not done and not self.conn.closing:
                    self.conn.send(KEEPALIVE)
            return disconnects.CLIENT
        finally:
            gone.cancel()


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _oversized(raw: list[tuple[bytes, bytes]]) -> bool:
    """Over the limits websockets puts on a handshake: headers, or one header line."""
    return len(raw) > MAX_NUM_HEADERS or any(
        len(name) + len(value) + 2 > MAX_LINE_LENGTH for name, value in raw
    )


def _cors(headers: Headers, allowed: list[str]) -> list[tuple[bytes, bytes]]:
    origin = headers.get("origin")
    if origin is None or not origin_allowed(headers, allowed):
        return []
    return [(b"access-control-allow-origin", origin.encode()), (b"vary", b"Origin")]


async def _json(send: Send, status: int, body: dict[str, Any], extra: list[Any]) -> None:
    data = orjson.dumps(body)
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(data))]
    await send({"type": "http.response.start", "status": status, "headers": headers + extra})
    await send({"type": "http.response.body", "body": data})


class Streams:
    """The stream endpoints of one pod: ``GET /sse``, ``GET /stream``, ``POST /emulation``."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        s = gw.settings
        self.formats: dict[str, Format] = {}
        if s.sse:
            self.formats["/sse"] = EventStream()
        if s.http_stream:
            self.formats["/stream"] = JsonLines()
        #: The paths this pod serves (none when both transports are off).
        self.paths = frozenset(self.formats) | ({"/emulation"} if self.formats else set())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope)
        cors = _cors(headers, self.gw.settings.allowed_origins)
        if _oversized(scope["headers"]):
            # The WebSocket handshake's limits (431 there too): a stream would hold its
            # request's headers for as long as it lasts.
            body = {
                "error": "headers_too_large",
                "message": f"over {MAX_NUM_HEADERS} headers, or a header line over "
                f"{MAX_LINE_LENGTH} bytes",
            }
            await _json(send, 431, body, [(b"connection", b"close"), *cors])
            return
        method = scope["method"]
        want = "POST" if scope["path"] == "/emulation" else "GET"
        if method == "OPTIONS":
            cors += [
                (b"access-control-allow-methods", want.encode()),
                (b"access-control-allow-headers", b"content-type, authorization, last-event-id"),
                (b"content-length", b"0"),
            ]
            await send({"type": "http.response.start", "status": 204, "headers": cors})
            await send({"type": "http.response.body", "body": b""})
        elif method != want:
            body = {"error": "method_not_allowed", "message": f"use {want}"}
            await _json(send, 405, body, [(b"allow", want.encode()), *cors])
        elif want == "POST":
            await self.emulate(headers, receive, send, cors)
        else:
            await self.stream(self.formats[scope["path"]], scope, headers, receive, send, cors)

    async def stream(
        self,
        fmt: Format,
        scope: Scope,
        headers: Headers,
        receive: Receive,
        send: Send,
        cors: list[Any],
    ) -> None:
        gw, s = self.gw, self.gw.settings
        query = QueryParams(scope.get("query_string", b""))
        channels = query.getlist("channel")
        for channel in channels:
            try:
                parse_client_frame(encode({"type": "subscribe", "channel": channel}))
            except ProtocolError as exc:
                await _json(send, 400, {"error": exc.code, "message": exc.message}, cors)
                return
        ident = await admit(gw, headers, query, fmt.name)
        if isinstance(ident, Disconnect):
            gw.metrics.closed.labels(reason=ident.label).inc()
            frame = close_frame(ident.code, ident.reason)
            if not frame["reconnect"] or ident.code == disconnects.TOKEN_EXPIRED.code:
                # A status the browser's EventSource does not retry.
                status = 403 if ident.code == disconnects.ORIGIN.code else 401
                await _json(send, status, {"error": ident.label, **frame}, cors)
                return
            await self._start(send, fmt, cors)
            await send({"type": "http.response.body", "body": fmt.close(ident.code, ident.reason)})
            return
        # EventSource's reconnect names the last id it received; it wins over the URL's.
        since = headers.get("last-event-id") or query.get("since")
        await self._start(send, fmt, cors)
        transport = StreamTransport(send, gw.metrics.writes, fmt)
        writer = SocketWriter(transport, gw.metrics, s.send_buffer_messages, s.send_buffer_bytes)
        conn = Connection(gw.hub.new_id(), ident.user, writer)
        session = StreamSession(gw, conn, ident, fmt)
        gw.emulation.sessions[conn.id] = session
        gauge = gw.metrics.stream_connections.labels(transport=fmt.name)
        gauge.inc()
        try:
            await session.run(receive, since, list(dict.fromkeys(channels)))
        finally:
            gauge.dec()
            del gw.emulation.sessions[conn.id]

    @staticmethod
    async def _start(send: Send, fmt: Format, cors: list[Any]) -> None:
        headers = [
            (b"content-type", fmt.media_type),
            # Neither a cache nor a buffering proxy (nginx) may hold frames back.
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
            *cors,
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})

    async def emulate(
        self, headers: Headers, receive: Receive, send: Send, cors: list[Any]
    ) -> None:
        """``POST /emulation {"session": TOKEN, "frames": [...]}``: a stream's client frames."""
        gw = self.gw
        try:
            raw = await _read_body(gw, headers, receive)
        except ConnectionError:
            return
        if raw is None:
            gw.metrics.limit_hits.labels(limit="body_size").inc()
            body = {
                "error": "too_large",
                "message": f"body over {gw.settings.max_body_bytes} bytes",
            }
            await _json(send, 413, body, cors)
            return
        try:
            obj = orjson.loads(raw)
            frames = parse_frames(obj, gw.settings.max_frame_bytes)
        except orjson.JSONDecodeError as exc:
            await _json(send, 400, {"error": "bad_json", "message": f"not JSON: {exc}"}, cors)
            return
        except ValueError as exc:
            await _json(send, 400, {"error": "bad_body", "message": str(exc)}, cors)
            return
        outcome = await gw.emulation.post(obj.get("session"), frames)
        gw.metrics.emulation_posts.labels(status=str(outcome.status)).inc()
        await _json(send, outcome.status, outcome.body, cors)
