"""A minimal HTTP-stream client (``GET /sse``, ``GET /stream``) as a bare ``asyncio.Protocol``.

The streams' counterpart of wsclient.WSClient, at the same cost per connection
(no task, no HTTP library): it writes one ``GET``, undoes the chunked transfer
coding by hand, splits the body into events (SSE: a blank line; NDJSON: a
newline), skips keep-alives, is ready on the welcome and counts every later
event as a delivery, with its latency from the payload's ``"t"``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from .wsclient import Client, Stats

#: The load generator's dialects that are HTTP streams, and whether each is NDJSON.
STREAM_DIALECTS = {"clarion-sse": False, "clarion-stream": True}


class StreamClient(Client):
    """One stream; ``dialect`` is a key of ``STREAM_DIALECTS`` (the signature is WSClient's)."""

    __slots__ = ("_body", "_buf", "_chunked", "_head", "_left", "_sep", "_skip", "ndjson")

    def __init__(
        self,
        host: str,
        path: str,
        dialect: str,
        stats: Stats,
        on_ready: Callable[[Any, bool], None],
        offer_deflate: bool = False,
    ) -> None:
        super().__init__(host, path, stats, on_ready)
        self.ndjson = STREAM_DIALECTS[dialect]
        self._buf = bytearray()  # bytes off the socket
        self._body = bytearray()  # the body, unchunked, not yet split into events
        self._head = True
        self._chunked = False
        self._left = 0  # bytes of the current chunk still to come
        self._skip = 0  # bytes of the CRLF after a chunk still to skip
        self._sep = b"\n" if self.ndjson else b"\n\n"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        request = f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\nCache-Control: no-cache\r\n"
        self.transport.write(request.encode() + b"\r\n")

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        if self._head:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).decode("latin-1").lower()
            del buf[: end + 4]
            if not head.startswith("http/1.1 200"):
                self._ready(False)
                self.close()
                return
            self._head = False
            self._chunked = "transfer-encoding: chunked" in head
        if self._chunked:
            self._unchunk()
        else:
            self._body += buf
            buf.clear()
        self._events()

    def _unchunk(self) -> None:
        buf, body = self._buf, self._body
        pos, n = 0, len(buf)
        while pos < n:
            if self._left:
                take = min(self._left, n - pos)
                body += buf[pos : pos + take]
                pos += take
                self._left -= take
                if not self._left:
                    self._skip = 2
            elif self._skip:
                take = min(self._skip, n - pos)
                pos += take
                self._skip -= take
            else:
                i = buf.find(b"\r\n", pos)
                if i < 0:
                    break
                size = int(bytes(buf[pos:i]).split(b";")[0], 16)
                pos = i + 2
                if size == 0:  # the last chunk: the server ended the stream
                    self.close()
                    break
                self._left = size
        del buf[:pos]

    def _events(self) -> None:
        body, sep = self._body, self._sep
        start = 0
        while (i := body.find(sep, start)) >= 0:
            event = bytes(body[start:i])
            start = i + len(sep)
            if not event or event[:1] == b":":
                continue  # a keep-alive
            if not self.ndjson:
                j = event.find(b"data: ")
                if j < 0:
                    continue
                event = event[j + 6 :]
            self._event(event.decode())
        if start:
            del body[:start]

    def _event(self, text: str) -> None:
        if self.is_ready:
            self._delivered(text)
        elif '"welcome"' in text:
            self._ready(True)

    def close(self) -> None:
        t = self.transport
        if t is not None and not t.is_closing():
            t.close()
