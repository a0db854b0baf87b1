"""A WebSocket client's bytes (RFC 6455), for clients that write every byte themselves:
the bench's load generator (no library cost), and tests that stall a socket or send
a handshake no library would."""

from __future__ import annotations

import base64
import os
import struct

OP_CONT = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA


def upgrade_request(host: str, path: str, *, key: str | None = None, extra: str = "") -> bytes:
    """The HTTP upgrade request; ``extra`` is more header lines, each ending in CRLF."""
    key = key or base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        f"Sec-WebSocket-Version: 13\r\n{extra}\r\n"
    ).encode()


def mask_frame(opcode: int, payload: bytes) -> bytes:
    """A client frame (clients must mask every frame they send)."""
    n = len(payload)
    key = os.urandom(4)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    if n:
        mask = (key * (n // 4 + 1))[:n]
        body = (int.from_bytes(payload, "big") ^ int.from_bytes(mask, "big")).to_bytes(n, "big")
    else:
        body = b""
    return head + key + body
