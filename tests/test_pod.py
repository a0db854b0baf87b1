"""One pod's health, readiness and metrics, as a probe and a scraper see them.

A real pod in-process (the real app under a real uvicorn, on real sockets, with
the embedded broker): nothing here needs a second pod or RabbitMQ.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest

from .support import InProcessPod, wait_for
from .wsclient import Client

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(scope="module")
def pod() -> Iterator[InProcessPod]:
    with InProcessPod(f"pod-{uuid.uuid4().hex[:6]}", auth="none") as p:
        yield p


def test_health_and_metrics_endpoints(pod: InProcessPod) -> None:
    assert httpx.get(f"{pod.http_url}/healthz").status_code == 200
    r = httpx.get(f"{pod.http_url}/readyz")
    assert r.status_code == 200 and r.json()["ready"] is True
    text = httpx.get(f"{pod.http_url}/metrics").text
    for name in (
        "clarion_connections",
        "clarion_connections_opened_total",
        "clarion_connections_closed_total",
        "clarion_subscriptions",
        "clarion_messages_published_total",
        "clarion_messages_consumed_total",
        "clarion_messages_delivered_total",
        "clarion_messages_dropped_total",
        "clarion_delivery_latency_seconds_bucket",
        "clarion_broker_connected",
    ):
        assert f"\n{name}" in text, name


async def test_connection_gauge_follows_sockets(pod: InProcessPod) -> None:
    before = pod.metric("clarion_connections")
    clients = [await Client.connect(f"{pod.ws_url}?user=g{i}", f"g{i}") for i in range(3)]
    for c in clients:
        await c.wait_welcome()
    await wait_for(lambda: pod.metric("clarion_connections") == before + 3, 10, message="gauge +3")
    for c in clients:
        await c.close()
    await wait_for(lambda: pod.metric("clarion_connections") == before, 10, message="gauge back")
