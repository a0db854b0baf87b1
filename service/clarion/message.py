"""The message model: what a publish becomes and how it travels through the broker.

An ``Envelope`` is serialized once, where it is published; pods forward the encoded
bytes to their sockets unchanged. Message ids are UUIDv7, so they sort by publish time.
The broker imports this module alone (protocol.py parses what clients and publishers
send into it).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Literal

import orjson

TargetKind = Literal["user", "channel", "broadcast"]


def new_message_id(now_ms: int | None = None) -> str:
    """A UUIDv7 (RFC 9562): time-ordered, so ids sort by publish time."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= ((rand >> 62) & 0xFFF) << 64
    value |= 0b10 << 62
    value |= rand & ((1 << 62) - 1)
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def id_timestamp_ms(message_id: str) -> int:
    """The millisecond timestamp inside a UUIDv7 message id."""
    return int(message_id.replace("-", "")[:12], 16)


#: The tail of a position id: a UUIDv7 whose random bits are all zero.
_POSITION_TAIL = "-7000-8000-000000000000"


def position_id(ms: int) -> str:
    """A point in time written as a message id (it names no message).

    A welcome (and a ``subscribed``) carries one: a client that has received
    no message yet reconnects with it as ``since`` and gets everything
    published from then on. It sorts among message ids by time, as they do.
    """
    h = f"{ms & ((1 << 48) - 1):012x}"
    return f"{h[:8]}-{h[8:12]}{_POSITION_TAIL}"


def is_position(message_id: str) -> bool:
    """Whether ``message_id`` is a position (``position_id``), not a message's id."""
    return message_id.endswith(_POSITION_TAIL)


def is_message_id(value: object) -> bool:
    if not isinstance(value, str) or len(value) != 36:
        return False
    try:
        int(value.replace("-", ""), 16)
    except ValueError:
        return False
    return value[14] == "7"


@dataclass(frozen=True, slots=True)
class Target:
    kind: TargetKind
    name: str | None = None  # user id or channel name; None for broadcast

    def as_json(self) -> dict[str, Any]:
        if self.kind == "broadcast":
            return {"broadcast": True}
        return {self.kind: self.name}


@dataclass(frozen=True, slots=True)
class Envelope:
    """One published message as it travels through the broker.

    ``body`` is the exact frame pushed to sockets, encoded once at publish time.
    The target is carried beside it (AMQP headers) so a pod routes without
    parsing the body.
    """

    id: str
    target: Target
    ts: int
    body: bytes
    #: An instruction to every pod instead of a message for sockets (``COMMANDS``);
    #: its body is the command's JSON arguments. Never replayed to a client.
    command: str | None = None
    #: The publisher's idempotency key: a second message with it is a duplicate.
    key: str | None = None

    @classmethod
    def create(cls, target: Target, data: Any, key: str | None = None) -> Envelope:
        ts = int(time.time() * 1000)
        mid = new_message_id(ts)
        frame = {"type": "message", "id": mid, "target": target.as_json(), "data": data, "ts": ts}
        return cls(id=mid, target=target, ts=ts, body=orjson.dumps(frame), key=key)

    @classmethod
    def create_command(cls, command: str, target: Target, args: dict[str, Any]) -> Envelope:
        if command not in COMMANDS:
            raise ValueError(f"unknown command {command!r}")
        ts = int(time.time() * 1000)
        return cls(new_message_id(ts), target, ts, orjson.dumps(args), command)


#: Commands a pod publishes to every pod: ``disconnect`` is kick.py's (it closes a user's
#: sockets); ``hello`` ... ``presence_reply`` are presence.py's (membership and the
#: scatter-gather of presence queries), ``occupancy`` and ``joinleave`` occupancy.py's,
#: ``emulate`` and ``emulate_reply`` emulation.py's (a stream's posted frames, to the pod
#: holding it).
COMMANDS = frozenset(
    {
        "disconnect",
        "hello",
        "bye",
        "presence",
        "presence_reply",
        "occupancy",
        "joinleave",
        "emulate",
        "emulate_reply",
    }
)
