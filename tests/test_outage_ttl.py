"""An outage longer than the pod queue's TTL: the queue may have dropped
messages, so the pod asks its sockets to reconnect (1012) and, with since=,
they get the gap from the history stream."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from .support import MGMT_AUTH, MGMT_URL, GatewayProcess, Vhost, wait_for
from .wsclient import Client

pytestmark = pytest.mark.timeout(60)

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


async def test_outage_longer_than_queue_ttl_makes_clients_reconnect_and_recover(
    vhost: Vhost, locked_user: str, tmp_path: Path
) -> None:
    ttl = ["--queue-message-ttl-ms", str(TTL_MS)]
    cut_off = GatewayProcess(
        f"ttl-a-{uuid.uuid4().hex[:6]}",
        host="127.0.0.50",
        amqp_url=vhost.amqp_url.replace("guest:guest@", f"{locked_user}:pw@"),
        args=["--auth", "none", *ttl],
        log_dir=tmp_path,
    ).start()
    other = GatewayProcess(
        f"ttl-b-{uuid.uuid4().hex[:6]}",
        host="127.0.0.51",
        amqp_url=vhost.amqp_url,
        args=["--auth", "none", *ttl],
        log_dir=tmp_path,
    ).start()
    mgmt = httpx.Client(base_url=MGMT_URL, auth=MGMT_AUTH, timeout=10)
    try:
        cut_off.wait_ready()
        other.wait_ready()
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

        assert await client.wait_closed(10) == 1012
        assert "since" in client.close_reason
        assert "during" not in client.data()  # the queue's TTL dropped it...
        again = await Client.connect(f"{cut_off.ws_url}?user=patient&since={first}", "again")
        welcome = await again.wait_welcome()
        assert welcome["recovered"] is True
        await again.wait_data("during")  # ...and the history stream still had it
        assert cut_off.metric("clarion_connections_closed_total", {"reason": "outage"}) == 1
        await again.close()
    finally:
        mgmt.put(f"/api/users/{locked_user}", json={"password": "pw", "tags": ""})
        mgmt.close()
        cut_off.kill()
        other.kill()
