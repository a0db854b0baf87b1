"""Unit tests of the pure parts: ids, frame parsing, publish bodies."""

from __future__ import annotations

import time
import uuid

import orjson
import pytest

from clarion.message import Envelope, Target, id_timestamp_ms, is_message_id, new_message_id
from clarion.protocol import ProtocolError, parse_client_frame, parse_publish_body


def test_message_ids_are_uuid7_and_sort_by_time() -> None:
    ids = []
    for ms in (1_700_000_000_000, 1_700_000_000_001, 1_800_000_000_000):
        mid = new_message_id(ms)
        assert uuid.UUID(mid).version == 7
        assert id_timestamp_ms(mid) == ms
        assert is_message_id(mid)
        ids.append(mid)
    assert ids == sorted(ids)
    assert len({new_message_id() for _ in range(1000)}) == 1000


def test_envelope_is_serialized_once_as_the_pushed_frame() -> None:
    env = Envelope.create(Target("user", "u1"), {"order": 1})
    frame = orjson.loads(env.body)
    assert frame == {
        "type": "message",
        "id": env.id,
        "target": {"user": "u1"},
        "data": {"order": 1},
        "ts": env.ts,
    }
    assert abs(env.ts - time.time() * 1000) < 5000


@pytest.mark.parametrize(
    ("text", "ftype"),
    [
        ("ping", "ping"),
        ('{"type":"ping"}', "ping"),
        ("hello", "text"),
        ("1 apple", "text"),
        ('{"type":"subscribe","channel":"a.b"}', "subscribe"),
        ('{"type":"publish","channel":"c","data":null}', "publish"),
    ],
)
def test_valid_frames(text: str, ftype: str) -> None:
    assert parse_client_frame(text).type == ftype


def test_subscribe_since_must_be_an_id() -> None:
    mid = new_message_id()
    assert (
        parse_client_frame(
            orjson.dumps({"type": "subscribe", "channel": "c", "since": mid}).decode()
        ).since
        == mid
    )
    with pytest.raises(ProtocolError) as err:
        parse_client_frame('{"type":"subscribe","channel":"c","since":"x"}')
    assert err.value.code == "bad_field"


@pytest.mark.parametrize(
    ("body", "n", "batch"),
    [
        (b'{"user":"u","data":1}', 1, False),
        (b'{"broadcast":true,"data":[1]}', 1, False),
        (b'{"messages":[{"channel":"c","data":1},{"user":"u","data":2}]}', 2, True),
    ],
)
def test_publish_bodies(body: bytes, n: int, batch: bool) -> None:
    items, is_batch = parse_publish_body(body)
    assert len(items) == n and is_batch is batch


def test_too_long_names_are_refused() -> None:
    with pytest.raises(ProtocolError):
        parse_publish_body(orjson.dumps({"user": "u" * 300, "data": 1}))
