"""``POST /api/disconnect`` closes a user's sockets on every pod (logouts, bans)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from .support import GatewayProcess, PodFactory, Vhost, wait_for
from .wsclient import Client

pytestmark = pytest.mark.timeout(60)

AUTH = {"Authorization": "Bearer k"}


@pytest.fixture(scope="module")
def pods(
    module_vhost: Vhost, module_pod_factory: PodFactory, routing: str
) -> Iterator[list[GatewayProcess]]:
    args = ["--auth", "none", "--api-key", "k"]
    with module_pod_factory(
        3, "disc", amqp_url=module_vhost.amqp_url, args=args, routing=routing
    ) as pods:
        yield pods


def disconnect(pod: GatewayProcess, body: Any, headers: dict[str, str] = AUTH) -> httpx.Response:
    return httpx.post(f"{pod.http_url}/api/disconnect", json=body, headers=headers, timeout=10)


async def sockets(pods: list[GatewayProcess], user: str) -> list[Client]:
    clients = []
    for pod in pods:
        c = await Client.connect(f"{pod.ws_url}?user={user}", user)
        await c.wait_welcome()
        clients.append(c)
    return clients


@pytest.mark.both_routings
async def test_a_user_is_disconnected_on_every_pod_and_nobody_else(pods: Any) -> None:
    user = f"banned-{uuid.uuid4().hex[:6]}"
    victims = await sockets(pods, user)
    bystanders = await sockets(pods, f"other-{uuid.uuid4().hex[:6]}")
    r = disconnect(pods[1], {"user": user, "reason": "banned"})
    assert r.status_code == 202, r.text
    for c in victims:
        assert await c.wait_closed(10) == 4502
        assert c.close_reason == "banned"
    assert not any(c.closed for c in bystanders)
    for pod in pods:
        await wait_for(
            lambda pod=pod: (
                pod.metric("clarion_connections_closed_total", {"reason": "disconnected"}) >= 1
            ),
            5,
            message="counted as disconnected",
        )
    for c in bystanders:
        await c.close()


@pytest.mark.both_routings
async def test_one_connection_and_a_code_that_lets_the_client_come_back(pods: Any) -> None:
    user = f"u-{uuid.uuid4().hex[:6]}"
    clients = await sockets(pods, user)
    target = clients[2]
    r = disconnect(pods[0], {"user": user, "conn": target.welcome["conn"], "code": 4000})
    assert r.status_code == 202, r.text
    assert await target.wait_closed(10) == 4000
    assert target.close_reason == "disconnected"
    assert not clients[0].closed and not clients[1].closed
    for c in clients[:2]:
        await c.close()


def test_a_replay_never_contains_the_command(pods: Any) -> None:
    user = f"u-{uuid.uuid4().hex[:6]}"
    r = httpx.post(
        f"{pods[0].http_url}/api/publish", json={"user": user, "data": 1}, headers=AUTH, timeout=5
    )
    since = r.json()["id"]
    assert disconnect(pods[0], {"user": user}).status_code == 202
    h = httpx.get(
        f"{pods[2].http_url}/api/history",
        params={"user": user, "since": since},
        headers=AUTH,
        timeout=10,
    )
    assert h.json()["messages"] == [] and h.json()["complete"] is True


@pytest.mark.parametrize(
    "body",
    [
        {},
        [],
        {"user": ""},
        {"user": 42},
        {"user": "u" * 257},
        {"user": "u", "code": 1000},
        {"user": "u", "code": 3999},
        {"user": "u", "code": 5000},
        {"user": "u", "code": True},
        {"user": "u", "code": "4500"},
        {"user": "u", "reason": "r" * 121},
        {"user": "u", "reason": 7},
        {"user": "u", "conn": ""},
        {"user": "u", "ban": True},
    ],
)
def test_bad_bodies_are_400_naming_the_problem(pods: Any, body: Any) -> None:
    r = disconnect(pods[0], body)
    assert r.status_code == 400, r.text
    assert r.json()["message"]


def test_the_api_key_is_required(pods: Any) -> None:
    assert disconnect(pods[0], {"user": "u"}, headers={}).status_code == 401
