"""Error answers a client (or a backend) can act on: they say which request and which field."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from .support import InProcessPod
from .wsclient import Client

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(scope="module")
def pod() -> Iterator[InProcessPod]:
    p = InProcessPod(
        auth="none", api_keys=["k"], max_subscriptions=2, max_frames_per_second=5
    ).start()
    try:
        yield p
    finally:
        p.stop()


async def connect(pod: InProcessPod, user: str) -> Client:
    c = await Client.connect(f"{pod.ws_url}?user={user}", user)
    await c.wait_welcome()
    return c


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"user": "u", "data": 1, "ttl": 60}, "ttl"),
        ({"channel": "c", "data": 1, "Data": 2}, "Data"),
        ({"broadcast": True, "data": 1, "type": "publish"}, "type"),
        ({"messages": [{"user": "u", "data": 1}], "atomic": True}, "atomic"),
        ({"messages": [{"user": "u", "data": 1}, {"user": "v", "data": 2, "x": 0}]}, "x"),
    ],
)
def test_unknown_fields_in_a_publish_body_are_refused_by_name(
    pod: InProcessPod, body: dict[str, Any], field: str
) -> None:
    r = httpx.post(
        f"{pod.http_url}/api/publish", json=body, headers={"Authorization": "Bearer k"}, timeout=5
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "unknown_field" and repr(field) in r.json()["message"]


def test_known_fields_only_are_accepted(pod: InProcessPod) -> None:
    r = httpx.post(
        f"{pod.http_url}/api/publish",
        json={"messages": [{"user": "u", "data": {"ttl": 60}}]},  # anything goes inside data
        headers={"Authorization": "Bearer k"},
        timeout=5,
    )
    assert r.status_code == 202, r.text


async def test_bare_text_is_bad_json_where_clients_cannot_publish(pod: InProcessPod) -> None:
    c = await connect(pod, "t")
    for text in ("hello", "{not json", "  x  "):
        await c.send(text)
    errors = [await c.wait_reply("error", i) for i in (1, 2, 3)]
    assert [e["code"] for e in errors] == ["bad_json"] * 3
    await c.close()


async def test_too_many_subscriptions_names_the_channel(pod: InProcessPod) -> None:
    c = await connect(pod, "s")
    for ch in ("a", "b", "c"):
        await c.send({"type": "subscribe", "channel": ch})
    err = await c.wait_reply("error")
    assert err["code"] == "too_many_subscriptions" and err["channel"] == "c"
    await c.send({"type": "subscribe", "channel": "a", "since": "bogus"})
    err = await c.wait_reply("error", 2)
    assert err["code"] == "bad_field" and err["channel"] == "a"
    await c.close()


async def test_rate_limited_names_the_channel_of_the_refused_frame(pod: InProcessPod) -> None:
    c = await connect(pod, "r")
    for i in range(30):  # a burst well over 2 x 5 frames
        await c.send({"type": "subscribe", "channel": f"ch{i}"})
    err = await c.wait_frame(
        lambda f: isinstance(f, dict) and f.get("code") == "rate_limited", 5, "rate_limited"
    )
    assert err["channel"].startswith("ch")
    await c.close()
