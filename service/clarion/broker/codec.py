"""Envelopes as AMQP messages and back: the target rides in headers, the body is the frame."""

from __future__ import annotations

from typing import Any

import aio_pika
from pamqp.commands import Basic

from ..message import COMMANDS, Envelope, Target, id_timestamp_ms

HDR_KIND = "clarion-target"
HDR_NAME = "clarion-name"
#: Set on commands to every pod (protocol.COMMANDS), absent on messages.
HDR_COMMAND = "clarion-command"
#: The publisher's idempotency key (idempotency.py).
HDR_KEY = "clarion-key"
#: A marker a replaying pod publishes to learn where "now" is in the history stream.
KIND_MARKER = "marker"
_KINDS = ("user", "channel", "broadcast")


class Marker(Exception):
    """Raised for a marker message: not a message for sockets."""


def _headers(env: Envelope) -> dict[str, Any]:
    headers: dict[str, Any] = {HDR_KIND: env.target.kind}
    if env.target.name is not None:
        headers[HDR_NAME] = env.target.name
    if env.command is not None:
        headers[HDR_COMMAND] = env.command
    if env.key is not None:
        headers[HDR_KEY] = env.key
    return headers


def envelope_properties(env: Envelope) -> Basic.Properties:
    """The AMQP properties of an envelope, for ``basic_publish`` (the publish path builds
    no aio-pika ``Message``: envelope_to_message's fields, without its checks)."""
    return Basic.Properties(
        content_type="application/json",
        # Transient in the pod queues: confirms stay fast (docs/performance.md).
        # Durability lives in the history stream, from which a pod catches up
        # after every reconnect (catchup.py).
        delivery_mode=1,
        headers=_headers(env),
        message_id=env.id,
    )


def envelope_to_message(env: Envelope) -> aio_pika.Message:
    """The same message as an aio-pika ``Message`` (tests and the bench publish these)."""
    return aio_pika.Message(
        env.body,
        message_id=env.id,
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT,
        headers=_headers(env),
    )


def marker_message(marker_id: str) -> aio_pika.Message:
    return aio_pika.Message(b"", message_id=marker_id, headers={HDR_KIND: KIND_MARKER})


def message_to_envelope(body: bytes, message_id: str | None, headers: dict[str, Any]) -> Envelope:
    """The envelope of a consumed message; Marker for markers, ValueError if malformed."""
    kind = headers.get(HDR_KIND)
    if type(kind) is bytes:
        kind = kind.decode()
    if kind not in _KINDS:
        if kind == KIND_MARKER:
            raise Marker(message_id)
        raise ValueError(f"message without a valid {HDR_KIND} header")
    name = headers.get(HDR_NAME)
    if type(name) is bytes:
        name = name.decode()
    command = headers.get(HDR_COMMAND)
    if command is not None:
        if type(command) is bytes:
            command = command.decode()
        if command not in COMMANDS:
            raise ValueError(f"unknown command {command!r}")
    ts = 0
    if message_id:
        try:
            ts = id_timestamp_ms(message_id)
        except ValueError:
            pass
    key = headers.get(HDR_KEY)
    if type(key) is bytes:
        key = key.decode()
    return Envelope(
        id=message_id or "",
        target=Target(kind, name),
        ts=ts,
        body=body,
        command=command,
        key=key if type(key) is str else None,
    )
