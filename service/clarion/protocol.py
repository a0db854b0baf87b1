"""The wire protocol: message ids, envelopes, and validation of client frames.

Everything here is pure (no I/O), so it is unit-tested and fuzzed directly.
A message is serialized once, where it is published; pods forward the encoded
bytes to their sockets unchanged.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import orjson

TargetKind = Literal["user", "channel", "broadcast"]

#: Maximum length of a user id or channel name.
MAX_NAME_LENGTH = 256


class ProtocolError(ValueError):
    """A client frame or publish body that cannot be accepted.

    ``code`` is the machine-readable error code sent in the error frame.
    """

    def __init__(self, code: str, message: str, channel: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        #: The channel of the refused frame, echoed so a client can match the error.
        self.channel = channel


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


#: How far ahead of this pod's clock a ``since`` may be (clock skew between pods).
SINCE_MAX_SKEW_MS = 60_000


def parse_since(value: object, now_ms: int | None = None) -> str:
    """A client's ``since``: the id of a message that can exist, else ProtocolError."""
    if not is_message_id(value):
        raise ProtocolError("bad_field", "'since' must be a message id")
    assert isinstance(value, str)
    now = int(time.time() * 1000) if now_ms is None else now_ms
    if id_timestamp_ms(value) > now + SINCE_MAX_SKEW_MS:
        raise ProtocolError("bad_field", "'since' names a message from the future")
    return value


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


#: Commands a pod publishes to every pod: ``disconnect`` closes a user's sockets;
#: ``hello`` ... ``presence_reply`` are presence.py's (membership and the scatter-gather
#: of presence queries), ``occupancy`` and ``joinleave`` occupancy.py's, ``emulate`` and
#: ``emulate_reply`` emulation.py's (a stream's posted frames, to the pod holding it).
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


#: Characters of channel patterns (the token's ``channels`` claim), never of a channel name.
PATTERN_CHARS = frozenset("*?[]")


def _check_name(value: object, field: str) -> str:
    if not isinstance(value, str):
        raise ProtocolError("bad_field", f"'{field}' must be a string")
    if not value or len(value) > MAX_NAME_LENGTH:
        raise ProtocolError("bad_field", f"'{field}' must be 1..{MAX_NAME_LENGTH} characters")
    if field == "channel" and not PATTERN_CHARS.isdisjoint(value):
        raise ProtocolError(
            "bad_field", "'channel' is a name, not a pattern: it cannot contain * ? [ ]"
        )
    return value


def _refuse_unknown(obj: dict[str, Any], allowed: frozenset[str], where: str) -> None:
    unknown = sorted(k for k in obj if k not in allowed)
    if unknown:
        raise ProtocolError(
            "unknown_field",
            f"{where} has no field {unknown[0][:64]!r} (known: {', '.join(sorted(allowed))})",
        )


PUBLISH_FIELDS = frozenset({"user", "channel", "broadcast", "data"})
#: The publish API's messages may also carry an idempotency key (client frames may not).
API_FIELDS = PUBLISH_FIELDS | {"idempotency_key"}


class Publication(NamedTuple):
    """One message to publish."""

    target: Target
    data: Any
    #: The idempotency key (publish API only).
    key: str | None = None


def parse_key(value: object, where: str) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_NAME_LENGTH:
        raise ProtocolError("bad_field", f"{where} must be 1..{MAX_NAME_LENGTH} characters")
    return value


def parse_target(obj: dict[str, Any]) -> Target:
    """The target of a publish body or publish frame: exactly one of user/channel/broadcast."""
    present = [k for k in ("user", "channel", "broadcast") if k in obj]
    if len(present) != 1:
        raise ProtocolError(
            "bad_target", "exactly one of 'user', 'channel' or 'broadcast' must be given"
        )
    key = present[0]
    if key == "broadcast":
        if obj["broadcast"] is not True:
            raise ProtocolError("bad_field", "'broadcast' must be true")
        return Target("broadcast")
    return Target("user" if key == "user" else "channel", _check_name(obj[key], key))


def parse_publish(obj: object, fields: frozenset[str] = API_FIELDS) -> Publication:
    """Validate one message of the publish API (or a client publish frame)."""
    if not isinstance(obj, dict):
        raise ProtocolError("bad_body", "a message must be a JSON object")
    _refuse_unknown(obj, fields, "a message")
    target = parse_target(obj)
    if "data" not in obj:
        raise ProtocolError("missing_field", "'data' is required")
    key = obj.get("idempotency_key")
    if key is not None:
        key = parse_key(key, "'idempotency_key'")
    return Publication(target, obj["data"], key)


def parse_publish_body(raw: bytes, header_key: str | None = None) -> tuple[list[Publication], bool]:
    """Validate a whole ``POST /api/publish`` body; a batch is all or nothing.

    Returns the messages and whether the body was a batch. ``header_key`` is the
    ``Idempotency-Key`` header (a single message only; a batch names its keys
    per message).
    """
    if header_key is not None:
        header_key = parse_key(header_key, "the Idempotency-Key header")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError("bad_json", f"body is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("bad_body", "body must be a JSON object")
    if "messages" in obj:
        _refuse_unknown(obj, frozenset({"messages"}), "a batch")
        messages = obj["messages"]
        if not isinstance(messages, list) or not messages:
            raise ProtocolError("bad_body", "'messages' must be a non-empty list")
        if header_key is not None:
            raise ProtocolError(
                "bad_field",
                "a batch names its keys per message ('idempotency_key'), not in a header",
            )
        out = []
        for i, m in enumerate(messages):
            try:
                out.append(parse_publish(m))
            except ProtocolError as exc:
                raise ProtocolError(exc.code, f"messages[{i}]: {exc.message}") from None
        keys = [p.key for p in out if p.key is not None]
        if len(keys) != len(set(keys)):
            raise ProtocolError(
                "bad_field", "two messages of a batch have the same idempotency_key"
            )
        return out, True
    one = parse_publish(obj)
    if header_key is not None:
        if one.key is not None and one.key != header_key:
            raise ProtocolError(
                "bad_field", "the Idempotency-Key header and idempotency_key differ"
            )
        one = one._replace(key=header_key)
    return [one], False


CLIENT_TYPES = ("subscribe", "unsubscribe", "publish", "ping", "refresh")

#: The longest token a ``refresh`` frame may carry (a JWT with many claims fits easily).
MAX_TOKEN_LENGTH = 16 * 1024
REFRESH_FIELDS = frozenset({"type", "token"})


@dataclass(frozen=True, slots=True)
class ClientFrame:
    type: str
    channel: str | None = None
    since: str | None = None
    target: Target | None = None
    data: Any = None
    raw_text: str | None = None  # bare text (not JSON): chat demo
    token: str | None = None  # a refresh frame's new token


def parse_client_frame(text: str) -> ClientFrame:
    """Parse one text frame from a client; raise ProtocolError with a clear reason."""
    stripped = text.strip()
    if stripped == "ping":
        return ClientFrame(type="ping")
    if not stripped.startswith(("{", "[", '"')) and not _looks_like_json_scalar(stripped):
        return ClientFrame(type="text", raw_text=text)
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError:
        if stripped.startswith(("{", "[")):
            raise ProtocolError("bad_json", "frame is not valid JSON") from None
        return ClientFrame(type="text", raw_text=text)
    if not isinstance(obj, dict):
        raise ProtocolError("bad_frame", "frame must be a JSON object")
    ftype = obj.get("type")
    if "type" not in obj:
        raise ProtocolError("missing_field", "'type' is required")
    if not isinstance(ftype, str):
        raise ProtocolError("bad_field", "'type' must be a string")
    if ftype == "ping":
        return ClientFrame(type="ping")
    if ftype in ("subscribe", "unsubscribe"):
        if "channel" not in obj:
            raise ProtocolError("missing_field", "'channel' is required")
        channel = _check_name(obj["channel"], "channel")
        since = obj.get("since")
        if since is not None:
            try:
                since = parse_since(since)
            except ProtocolError as exc:
                raise ProtocolError(exc.code, exc.message, channel) from None
        return ClientFrame(type=ftype, channel=channel, since=since)
    if ftype == "publish":
        target, data, _ = parse_publish(obj, PUBLISH_FIELDS | {"type"})
        return ClientFrame(type="publish", target=target, data=data)
    if ftype == "refresh":
        return ClientFrame(type="refresh", token=parse_refresh(obj))
    raise ProtocolError("unknown_type", f"unknown frame type {ftype[:64]!r}")


def parse_refresh(obj: dict[str, Any]) -> str:
    """A ``refresh`` frame's token: a non-empty string of at most ``MAX_TOKEN_LENGTH``
    characters, and no other field (a typo is refused, never ignored)."""
    _refuse_unknown(obj, REFRESH_FIELDS, "a refresh frame")
    if "token" not in obj:
        raise ProtocolError("missing_field", "'token' is required")
    token = obj["token"]
    if not isinstance(token, str):
        raise ProtocolError("bad_field", "'token' must be a string")
    if not token.strip() or len(token) > MAX_TOKEN_LENGTH:
        raise ProtocolError("bad_field", f"'token' must be 1..{MAX_TOKEN_LENGTH} characters")
    return token


def _looks_like_json_scalar(s: str) -> bool:
    if s in ("true", "false", "null"):
        return True
    return bool(s) and (s[0].isdigit() or (s[0] == "-" and s[1:2].isdigit()))


def encode(frame: dict[str, Any]) -> str:
    return orjson.dumps(frame).decode()


def error_frame(code: str, message: str, channel: str | None = None) -> str:
    """An error frame; ``channel`` names the channel of the refused request, if it had one."""
    frame = {"type": "error", "code": code, "message": message}
    if channel is not None:
        frame["channel"] = channel
    return encode(frame)


def channel_of(text: str) -> str | None:
    """The ``channel`` of a client frame, if it is a JSON object with one (for error frames)."""
    if not text.startswith("{"):
        return None
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    channel = obj.get("channel") if isinstance(obj, dict) else None
    return channel[:MAX_NAME_LENGTH] if isinstance(channel, str) else None
