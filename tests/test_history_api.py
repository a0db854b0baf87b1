"""``GET /api/history`` answers for the whole cluster what a reconnecting client would get."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from clarion.message import new_message_id

from .private_broker import PrivateBroker
from .support import GatewayProcess, PodFactory, Vhost, wait_for_sync
from .wsclient import Client

pytestmark = pytest.mark.timeout(120)

AUTH = {"Authorization": "Bearer k"}
ARGS = ["--auth", "none", "--api-key", "k"]


@pytest.fixture(scope="module")
def pods(module_vhost: Vhost, module_pod_factory: PodFactory) -> list[GatewayProcess]:
    return module_pod_factory(2, "hist", amqp_url=module_vhost.amqp_url, args=ARGS)


def publish(pod: GatewayProcess, *bodies: dict[str, Any]) -> list[str]:
    r = httpx.post(
        f"{pod.http_url}/api/publish", json={"messages": list(bodies)}, headers=AUTH, timeout=10
    )
    assert r.status_code == 202, r.text
    ids: list[str] = r.json()["ids"]
    return ids


def history(pod: GatewayProcess, **params: Any) -> httpx.Response:
    return httpx.get(f"{pod.http_url}/api/history", params=params, headers=AUTH, timeout=15)


async def test_any_pod_answers_with_the_same_selection_and_order_as_a_replay(pods: Any) -> None:
    a, b = pods
    user, channel = f"u-{uuid.uuid4().hex[:6]}", f"ch-{uuid.uuid4().hex[:6]}"
    first = publish(a, {"user": user, "data": "before"})[0]
    ids = publish(
        a,
        {"user": user, "data": 1},
        {"channel": channel, "data": 2},
        {"broadcast": True, "data": 3},
        {"user": "someone-else", "data": 4},
        {"user": user, "data": 5},
    )
    r = history(b, user=user, since=first)  # asked of the other pod
    assert r.status_code == 200, r.text
    body = r.json()
    assert [m["data"] for m in body["messages"]] == [1, 3, 5]
    assert (body["complete"], body["more"]) == (True, False)
    # What a client reconnecting with the same since gets, in the same order.
    c = await Client.connect(f"{b.ws_url}?user={user}&since={first}")
    welcome = await c.wait_welcome()
    assert welcome["missed"] == 3
    await c.wait_data(5)
    assert [m["id"] for m in c.messages] == [m["id"] for m in body["messages"]]
    await c.close()
    r = history(b, channel=channel)
    assert [m["id"] for m in r.json()["messages"]] == [ids[1]]
    assert r.json()["messages"][0]["target"] == {"channel": channel}


def test_limit_more_and_reverse(pods: Any) -> None:
    a, b = pods
    channel = f"ch-{uuid.uuid4().hex[:6]}"
    ids = publish(a, *({"channel": channel, "data": i} for i in range(7)))
    page = history(b, channel=channel, limit=3).json()
    assert [m["data"] for m in page["messages"]] == [0, 1, 2] and page["more"] is True
    rest = history(b, channel=channel, since=ids[2], limit=10).json()
    assert [m["data"] for m in rest["messages"]] == [3, 4, 5, 6] and rest["more"] is False
    newest = history(b, channel=channel, limit=2, reverse="true").json()
    assert [m["data"] for m in newest["messages"]] == [6, 5]


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"user": "u", "channel": "c"},
        {"user": ""},
        {"user": "u" * 257},
        {"channel": "orders.*"},
        {"channel": "c", "limit": "0"},
        {"channel": "c", "limit": "1001"},
        {"channel": "c", "limit": "-1"},
        {"channel": "c", "limit": "ten"},
        {"channel": "c", "since": "nope"},
        {"channel": "c", "since": new_message_id(2**47)},  # from the future
        {"channel": "c", "reverse": "maybe"},
        {"channel": "c", "order": "desc"},
    ],
)
def test_bad_queries_are_400_with_a_reason(pods: Any, params: dict[str, str]) -> None:
    r = history(pods[0], **params)
    assert r.status_code == 400, r.text
    assert r.json()["error"] and r.json()["message"]


def test_the_api_key_is_required(pods: Any) -> None:
    r = httpx.get(f"{pods[0].http_url}/api/history", params={"channel": "c"}, timeout=5)
    assert r.status_code == 401


def test_an_unknown_since_inside_the_window_says_so(pods: Any) -> None:
    a, _ = pods
    publish(a, {"channel": "x", "data": 0})
    r = history(a, channel="x", since=new_message_id()).json()
    assert r["complete"] is False and r["reason"] == "unknown"


def test_history_survives_a_broker_restart(
    private_broker: PrivateBroker, pod_factory: PodFactory
) -> None:
    broker = private_broker
    a, b = pod_factory(2, "hist", amqp_url=broker.amqp_url, args=ARGS)
    ids = publish(a, *({"channel": "kept", "data": i} for i in range(5)))
    broker.stop()
    broker.start()
    wait_for_sync(lambda: a.ready() and b.ready(), 60, 0.2, "pods ready again")
    r = history(b, channel="kept")
    assert r.status_code == 200, r.text
    assert [m["id"] for m in r.json()["messages"]] == ids
