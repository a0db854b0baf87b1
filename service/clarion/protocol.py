"""The wire protocol: validation of publish bodies and client frames, and the frames a pod
writes back (errors).

Everything here is pure (no I/O), so it is unit-tested and fuzzed directly. The message
model these produce (``Target``, ``Envelope``, message ids) is message.py's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

# The message model lives in message.py. Nothing in the tree imports it from here any
# more; these names stay importable for code written before the split (and work in flight).
from .message import COMMANDS as COMMANDS
from .message import Envelope as Envelope
from .message import Target as Target
from .message import TargetKind as TargetKind
from .message import id_timestamp_ms as id_timestamp_ms
from .message import is_message_id as is_message_id
from .message import is_position as is_position
from .message import new_message_id as new_message_id
from .message import position_id as position_id
from .names import MAX_NAME_LENGTH, PATTERN_CHARS


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
REFRESH_FIELDS = frozenset({"type", "token", "channel"})


@dataclass(frozen=True, slots=True)
class ClientFrame:
    type: str
    channel: str | None = None
    since: str | None = None
    target: Target | None = None
    data: Any = None
    raw_text: str | None = None  # bare text (not JSON): chat demo
    token: str | None = None  # a refresh frame's new token; a subscribe frame's subscription token


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
        sub_token: str | None = None
        try:
            if since is not None:
                since = parse_since(since)
            if ftype == "subscribe" and "token" in obj:
                sub_token = _check_token(obj["token"])
        except ProtocolError as exc:
            raise ProtocolError(exc.code, exc.message, channel) from None
        return ClientFrame(type=ftype, channel=channel, since=since, token=sub_token)
    if ftype == "publish":
        target, data, _ = parse_publish(obj, PUBLISH_FIELDS | {"type"})
        return ClientFrame(type="publish", target=target, data=data)
    if ftype == "refresh":
        token, of_channel = parse_refresh(obj)
        return ClientFrame(type="refresh", token=token, channel=of_channel)
    raise ProtocolError("unknown_type", f"unknown frame type {ftype[:64]!r}")


def parse_refresh(obj: dict[str, Any]) -> tuple[str, str | None]:
    """A ``refresh`` frame's token (a non-empty string of at most ``MAX_TOKEN_LENGTH``
    characters) and, for a subscription token, its ``channel``; no other field (a typo is
    refused, never ignored)."""
    _refuse_unknown(obj, REFRESH_FIELDS, "a refresh frame")
    channel = _check_name(obj["channel"], "channel") if "channel" in obj else None
    if "token" not in obj:
        raise ProtocolError("missing_field", "'token' is required", channel)
    try:
        return _check_token(obj["token"]), channel
    except ProtocolError as exc:
        raise ProtocolError(exc.code, exc.message, channel) from None


def _check_token(token: object) -> str:
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
