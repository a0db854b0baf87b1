"""A minimal WebSocket client as a bare ``asyncio.Protocol``: no task per socket.

The load generator must cost the same against every server, and as little as
possible, since it shares the two cores with the servers it measures. So each
socket is one small protocol object: it writes the upgrade request, parses
server frames by hand (unmasked, per RFC 6455), answers pings and closes, and
hands each text message to a ``Session`` that speaks the server's dialect:

- ``clarion``: ready on the ``welcome`` frame.
- ``sio``: Engine.IO v4 / Socket.IO v5 text framing over a plain websocket:
  answer the ``0{...}`` open with ``40``, ready on ``40{...}``, answer ``2``
  pings with ``3``, messages are ``42["event",data]``.
- ``raw``: ready on the server's ``hi``.

Every pushed payload carries ``"t":<publish time>`` first; the receive time
minus it is the latency (one host, one clock).
"""

from __future__ import annotations

import asyncio
import struct
import time
import zlib
from array import array
from collections.abc import Callable
from typing import Any

from testkit.websocket import (
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    mask_frame,
    upgrade_request,
)

_DEFLATE_TAIL = b"\x00\x00\xff\xff"


def extract_ts(text: str) -> float | None:
    """The ``"t"`` publish timestamp inside a pushed payload, without a JSON parse."""
    i = text.find('"t":')
    if i < 0:
        return None
    i += 4
    while text[i] == " ":
        i += 1
    j = i
    n = len(text)
    while j < n and text[j] not in ",}]":
        j += 1
    try:
        return float(text[i:j])
    except ValueError:
        return None


class Stats:
    """What one load-generator process observed, shared by its sockets."""

    def __init__(self) -> None:
        self.received = 0
        self.last_recv = 0.0
        self.latencies = array("d")
        self.ready = 0
        self.ready_times = array("d")
        self.failed = 0
        self.closed = 0
        self.record_latency = True

    def reset(self) -> None:
        self.received = 0
        self.last_recv = 0.0
        self.latencies = array("d")


class Client(asyncio.Protocol):
    """What every load-generator connection shares: readiness and the delivery count."""

    __slots__ = ("_on_ready", "host", "is_ready", "path", "stats", "transport")

    def __init__(
        self, host: str, path: str, stats: Stats, on_ready: Callable[[Any, bool], None]
    ) -> None:
        self.host = host
        self.path = path
        self.stats = stats
        self._on_ready = on_ready
        self.transport: Any = None  # uvloop's transport is no asyncio.Transport subclass
        self.is_ready = False

    def connection_lost(self, exc: Exception | None) -> None:
        self.stats.closed += 1
        if not self.is_ready:
            self._ready(False)

    def _delivered(self, text: str) -> None:
        """One pushed message: counted, with its latency from its ``"t"``."""
        now = time.time()
        stats = self.stats
        stats.received += 1
        stats.last_recv = now
        if stats.record_latency:
            ts = extract_ts(text)
            if ts is not None:
                stats.latencies.append(now - ts)

    def _ready(self, ok: bool) -> None:
        if self.is_ready:
            return
        self.is_ready = ok
        cb = self._on_ready
        self._on_ready = _noop
        cb(self, ok)


class WSClient(Client):
    """One socket; ``dialect`` is ``clarion``, ``sio`` or ``raw``."""

    __slots__ = (
        "_buf",
        "_frag",
        "_frag_op",
        "_frag_rsv1",
        "_inflate",
        "deflate",
        "dialect",
        "offer_deflate",
        "upgraded",
    )

    def __init__(
        self,
        host: str,
        path: str,
        dialect: str,
        stats: Stats,
        on_ready: Callable[[WSClient, bool], None],
        offer_deflate: bool = False,
    ) -> None:
        super().__init__(host, path, stats, on_ready)
        self.dialect = dialect
        self.offer_deflate = offer_deflate
        self._buf = bytearray()
        self.upgraded = False
        self.deflate = False
        self._inflate: zlib._Decompress | None = None
        self._frag: bytearray | None = None
        self._frag_op = 0
        self._frag_rsv1 = False

    # -- asyncio.Protocol --------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        ext = (
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
            if self.offer_deflate
            else ""
        )
        self.transport.write(upgrade_request(self.host, self.path, extra=ext))

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).decode("latin-1")
            del buf[: end + 4]
            if not head.startswith("HTTP/1.1 101"):
                self._ready(False)
                self.close()
                return
            self.upgraded = True
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "sec-websocket-extensions" and "permessage-deflate" in (
                    value.lower()
                ):
                    self.deflate = True
                    self._inflate = zlib.decompressobj(-15)
        self._parse()

    # -- frames ------------------------------------------------------------

    def _parse(self) -> None:
        buf = self._buf
        pos = 0
        n = len(buf)
        while n - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            length = b1 & 0x7F
            hdr = 2
            if length == 126:
                if n - pos < 4:
                    break
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                hdr = 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                hdr = 10
            if n - pos < hdr + length:
                break
            payload = bytes(buf[pos + hdr : pos + hdr + length])
            pos += hdr + length
            self._frame(b0, payload)
        if pos:
            del buf[:pos]

    def _frame(self, b0: int, payload: bytes) -> None:
        fin = b0 & 0x80
        rsv1 = bool(b0 & 0x40)
        opcode = b0 & 0x0F
        if opcode >= OP_CLOSE:
            if opcode == OP_PING:
                self.send_frame(OP_PONG, payload)
            elif opcode == OP_CLOSE:
                self.send_frame(OP_CLOSE, payload[:2])
                if self.transport is not None:
                    self.transport.close()
            return
        if opcode == OP_CONT:
            if self._frag is None:
                return
            self._frag += payload
            if not fin:
                return
            payload, opcode, rsv1 = bytes(self._frag), self._frag_op, self._frag_rsv1
            self._frag = None
        elif not fin:
            self._frag = bytearray(payload)
            self._frag_op = opcode
            self._frag_rsv1 = rsv1
            return
        if rsv1 and self._inflate is not None:
            payload = self._inflate.decompress(payload + _DEFLATE_TAIL)
        if opcode == OP_TEXT:
            self._message(payload.decode())

    def _message(self, text: str) -> None:
        if self.is_ready:
            if self.dialect == "sio":
                if text == "2":
                    self.send_text("3")
                    return
                if not text.startswith("42"):
                    return
            self._delivered(text)
            return
        if self.dialect == "clarion":
            if '"welcome"' in text:
                self._ready(True)
        elif self.dialect == "sio":
            if text.startswith("0{"):
                self.send_text("40")
            elif text.startswith("40"):
                self._ready(True)
            elif text == "2":
                self.send_text("3")
        elif text == "hi":
            self._ready(True)

    # -- sending -----------------------------------------------------------

    def send_frame(self, opcode: int, payload: bytes) -> None:
        t = self.transport
        if t is not None and not t.is_closing():
            t.write(mask_frame(opcode, payload))

    def send_text(self, text: str) -> None:
        self.send_frame(OP_TEXT, text.encode())

    def close(self) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        if self.upgraded:
            t.write(mask_frame(OP_CLOSE, struct.pack("!H", 1000)))
        t.close()


def _noop(client: Any, ok: bool) -> None:
    pass
