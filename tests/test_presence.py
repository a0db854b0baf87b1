"""Presence, cluster-wide: any pod answers for all pods, and names the ones that did not answer."""

from __future__ import annotations

import signal
import time
import uuid

import httpx
import pytest

from .support import GatewayProcess, PodFactory, Vhost, wait_for
from .wsclient import Client

pytestmark = pytest.mark.timeout(90)

AUTH = {"Authorization": "Bearer k"}


@pytest.fixture
def pods(vhost: Vhost, pod_factory: PodFactory, routing: str) -> list[GatewayProcess]:
    args = ["--auth", "none", "--api-key", "k", "--presence-interval", "1"]
    return pod_factory(3, "pres", amqp_url=vhost.amqp_url, args=args, routing=routing)


@pytest.fixture(scope="module")
def pod(module_vhost: Vhost, module_pod_factory: PodFactory) -> GatewayProcess:
    """One pod for the tests of what the API refuses (no pod dies there)."""
    args = ["--auth", "none", "--api-key", "k"]
    (p,) = module_pod_factory(1, "pres-api", amqp_url=module_vhost.amqp_url, args=args)
    return p


def get(pod: GatewayProcess, path: str, **params: str) -> httpx.Response:
    return httpx.get(f"{pod.http_url}{path}", params=params, headers=AUTH, timeout=10)


async def test_presence_is_exact_across_pods_and_partial_when_one_dies(
    pods: list[GatewayProcess],
) -> None:
    channel = f"room-{uuid.uuid4().hex[:6]}"
    # alice: two sockets on pod 0 and one on pod 1; bob on pod 2; carol on pod 1, elsewhere.
    layout = [("alice", 0), ("alice", 0), ("alice", 1), ("bob", 2), ("carol", 1)]
    clients = []
    for user, i in layout:
        c = await Client.connect(f"{pods[i].ws_url}?user={user}", user)
        await c.wait_welcome()
        if user != "carol":
            await c.send({"type": "subscribe", "channel": channel})
            await c.wait_reply("subscribed")
        clients.append(c)

    def everyone_known() -> bool:  # pods learn each other from their hellos
        return all(get(p, "/api/presence", user="x").json()["answered"] == names for p in pods)

    names = sorted(p.pod_name for p in pods)
    await wait_for(everyone_known, 10, 0.2, "every pod knows the others")
    for pod in pods:  # any pod answers for the whole cluster
        body = get(pod, "/api/presence", channel=channel).json()
        assert body["users"] == {"alice": 3, "bob": 1}, body
        assert body["missing"] == []
        stats = get(pod, "/api/presence/stats", channel=channel).json()
        assert (stats["users"], stats["sockets"]) == (2, 4)
        user = get(pod, "/api/presence", user="alice").json()
        assert user["sockets"] == 3
        assert user["pods"] == {pods[0].pod_name: 2, pods[1].pod_name: 1}

    pods[2].signal(signal.SIGKILL)
    started_at = time.monotonic()
    body = get(pods[0], "/api/presence", channel=channel).json()
    took = time.monotonic() - started_at
    assert body["missing"] == [pods[2].pod_name]  # a partial answer that names the dead pod
    assert body["users"] == {"alice": 3}
    assert took < 3, f"a partial answer took {took:.1f}s"
    for c in clients[:3] + clients[4:]:
        await c.close()


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/api/presence", {}),
        ("/api/presence", {"channel": "a", "user": "b"}),
        ("/api/presence", {"channel": ""}),
        ("/api/presence", {"channel": "a.*"}),
        ("/api/presence", {"user": "u" * 257}),
        ("/api/presence", {"channel": "a", "verbose": "1"}),
        ("/api/presence/stats", {"user": "u"}),
    ],
)
def test_bad_presence_queries_are_400(
    pod: GatewayProcess, path: str, params: dict[str, str]
) -> None:
    r = get(pod, path, **params)
    assert r.status_code == 400, r.text


def test_presence_needs_the_api_key(pod: GatewayProcess) -> None:
    r = httpx.get(f"{pod.http_url}/api/presence", params={"channel": "a"}, timeout=5)
    assert r.status_code == 401
