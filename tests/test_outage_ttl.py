"""An outage longer than the pod queue's TTL: the queue dropped what waited in
it, and the pod, when it is back, catches up from the history stream before it
consumes its queue again; the socket that stayed open misses nothing."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from urllib.parse import quote

import httpx
import pytest

from .support import MGMT_AUTH, MGMT_URL, PodFactory, Vhost, wait_for
from .wsclient import Client

pytestmark = [pytest.mark.timeout(60), pytest.mark.both_routings]  # a catch-up

TTL_MS = 1500


@pytest.fixture
def locked_user(vhost: Vhost) -> Iterator[str]:
    user = f"clarion-test-{uuid.uuid4().hex[:6]}"
    with httpx.Client(base_url=MGMT_URL, auth=MGMT_AUTH, timeout=10) as mgmt:
        mgmt.put(f"/api/users/{user}", json={"password": "pw", "tags": ""}).raise_for_status()
        mgmt.put(
            f"/api/permissions/{vhost.quoted}/{user}",
            json={"configure": ".*", "write": ".*", "read": ".*"},
        ).raise_for_status()
    yield user
    httpx.delete(f"{MGMT_URL}/api/users/{user}", auth=MGMT_AUTH, timeout=10)


async def test_pod_catches_up_from_history_after_an_outage_longer_than_queue_ttl(
    vhost: Vhost, locked_user: str, pod_factory: PodFactory, routing: str
) -> None:
    args = ["--auth", "none", "--queue-message-ttl-ms", str(TTL_MS)]
    cut_off, other = pod_factory(
        2, "ttl", args=args, hosts=["127.0.0.50", "127.0.0.51"], routing=routing, start=False
    )
    cut_off.amqp_url = vhost.amqp_url.replace("guest:guest@", f"{locked_user}:pw@")
    other.amqp_url = vhost.amqp_url
    pod_factory.start([cut_off, other])
    mgmt = httpx.Client(base_url=MGMT_URL, auth=MGMT_AUTH, timeout=10)
    try:
        client = await Client.connect(f"{cut_off.ws_url}?user=patient", "patient")
        await client.wait_welcome()
        api = f"{other.http_url}/api/publish"
        first = httpx.post(api, json={"user": "patient", "data": "before"}).json()["id"]
        await client.wait_data("before")

        # Cut the pod off from RabbitMQ and keep it out past the queue TTL.
        mgmt.put(f"/api/users/{locked_user}", json={"password": "locked", "tags": ""})
        conns = await wait_for(
            lambda: [c for c in vhost.connections() if c["user"] == locked_user],
            15,
            0.5,
            "the pod's AMQP connection",
        )
        for conn in conns:
            mgmt.delete(f"/api/connections/{quote(conn['name'], safe='')}")
        await wait_for(lambda: not cut_off.ready(), 10, message="pod unready")
        down_at = time.monotonic()
        assert httpx.post(api, json={"user": "patient", "data": "during"}).status_code == 202
        # The outage itself is the scenario: it must outlast the TTL.
        await wait_for(
            lambda: time.monotonic() - down_at > TTL_MS / 1000 + 0.5,
            10,
            message="an outage longer than the queue TTL",
        )
        mgmt.put(f"/api/users/{locked_user}", json={"password": "pw", "tags": ""})
        await wait_for(cut_off.ready, 20, 0.2, "pod back")

        await client.wait_data("during")  # caught up from history: the TTL dropped it
        published = httpx.post(api, json={"user": "patient", "data": "after"})
        assert published.status_code == 202
        await client.wait_data("after")
        assert client.data() == ["before", "during", "after"]
        assert not client.closed
        queue = next(q for q in vhost.queues() if q["name"] == f"clarion.pod.{cut_off.pod_name}")
        assert queue["arguments"]["x-message-ttl"] == TTL_MS
        # It came from history, not from the queue (which the TTL emptied).
        assert re.search(r"caught up [1-9]\d* messages from history", cut_off.log())
        assert first
    finally:
        mgmt.put(f"/api/users/{locked_user}", json={"password": "pw", "tags": ""})
        mgmt.close()
