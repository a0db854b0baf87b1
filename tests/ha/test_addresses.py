"""``--amqp-url`` with several addresses (parsing, a pod that skips a dead one), and quorum
pod queues.

On the shared broker (one node), in a vhost of the test's own.
"""

from __future__ import annotations

import httpx
import pytest

from clarion.broker.rabbitmq import address_of, split_urls
from testkit.net import free_port
from tests.support import RABBIT, PodFactory, Vhost, wait_for_sync
from tests.wsclient import Client


@pytest.mark.timeout(5)
def test_split_urls_and_addresses() -> None:
    assert split_urls("amqp://a/v") == ["amqp://a/v"]
    assert split_urls(" amqp://u:p@a:1/v , amqp://u:p@b:2/v,") == [
        "amqp://u:p@a:1/v",
        "amqp://u:p@b:2/v",
    ]
    for empty in ("", ",", " , "):
        with pytest.raises(ValueError, match="names no broker"):
            split_urls(empty)
    assert address_of("amqp://u:secret@rabbit-0.rabbit:5673/v") == "rabbit-0.rabbit:5673"
    assert address_of("amqp://u:secret@rabbit/v") == "rabbit:5672"
    assert address_of("amqps://u:secret@rabbit/v") == "rabbit:5671"


@pytest.mark.timeout(45)
def test_a_pod_skips_a_dead_address_and_names_the_live_one(
    vhost: Vhost, pod_factory: PodFactory
) -> None:
    dead_port = free_port("127.0.0.1")
    dead = f"amqp://guest:dead-node-password@127.0.0.1:{dead_port}/{vhost.quoted}"
    (pod,) = pod_factory(1, "addr", amqp_url=f"{dead},{vhost.amqp_url}", timeout=30)
    live = f"{RABBIT.host}:{RABBIT.port}"
    wait_for_sync(
        lambda: pod.metric("clarion_broker_address", {"address": live}) == 1, 10, 0.2, "address"
    )
    log = pod.log()
    assert f"broker connection to 127.0.0.1:{dead_port} failed" in log
    assert f"broker connected to {live}" in log
    assert "dead-node-password" not in log


@pytest.mark.timeout(45)
async def test_quorum_pod_queues_deliver(vhost: Vhost, pod_factory: PodFactory) -> None:
    """``--pod-queue-type quorum``: a replicated (durable) pod queue; on one node too."""
    args = ["--auth", "none", "--pod-queue-type", "quorum"]
    pods = pod_factory(2, "quorum", amqp_url=vhost.amqp_url, args=args, timeout=30)
    queues = {q["name"]: q for q in vhost.queues()}
    for p in pods:
        q = queues[f"clarion.pod.{p.pod_name}"]
        assert q["type"] == "quorum" and q["durable"] is True, q
    sock = await Client.connect(f"{pods[1].ws_url}?user=alice", "alice")
    await sock.wait_welcome()
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.post(f"{pods[0].http_url}/api/publish", json={"user": "alice", "data": "q"})
    assert r.status_code == 202, r.text
    await sock.wait_data("q")
    await sock.close()
