"""Frames on their way to sockets: one record for every kind.

A pushed message is decoded once per pod into one ``Outgoing`` that every
matching socket shares; control frames (welcome, errors, pongs) and replayed
history use the same record with their own ``kind``.
"""

from __future__ import annotations

import enum
from typing import NamedTuple


class Kind(enum.Enum):
    #: A message consumed live: counted as delivered and in the latency histogram.
    LIVE = "live"
    #: A message from history (since= recovery): counted as delivered only.
    REPLAY = "replay"
    #: A protocol frame of the session (welcome, subscribed, error, pong): not counted.
    CONTROL = "control"


class Outgoing(NamedTuple):
    text: str
    nbytes: int
    kind: Kind
    #: The message id (None for control frames).
    id: str | None = None
    #: Publish time in unix milliseconds (0 for control frames).
    ts: int = 0
    #: The whole WebSocket frame, built once for the transports that can write it as is.
    frame: bytes | None = None


def control(text: str) -> Outgoing:
    return Outgoing(text, len(text), Kind.CONTROL)


def text_frame(payload: bytes) -> bytes:
    """An unmasked, unfragmented WebSocket text frame (RFC 6455 5.2), as a server sends it."""
    n = len(payload)
    if n < 126:
        header = bytes((0x81, n))
    elif n < 1 << 16:
        header = bytes((0x81, 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((0x81, 127)) + n.to_bytes(8, "big")
    return header + payload
