"""Each gateway has its own history stream, named after its exchange, even in a shared vhost.

These run on the shared broker (one node), each in a vhost of its own.
"""

from __future__ import annotations

import httpx
import pytest

from clarion_operator.clients import Management, vhost_of
from tests.support import PodFactory, Vhost, wait_for
from tests.wsclient import Client


@pytest.mark.timeout(60)
async def test_two_gateways_in_one_vhost_do_not_replay_each_others_messages(
    vhost: Vhost, pod_factory: PodFactory
) -> None:
    one, two = (
        pod_factory(
            1,
            f"hist-{name}",
            amqp_url=vhost.amqp_url,
            args=["--auth", "none", "--exchange", f"{name}.fanout"],
            start=False,
        )[0]
        for name in ("one", "two")
    )
    pod_factory.start([one, two], timeout=30)
    sock = await Client.connect(f"{two.ws_url}?user=alice", "two-alice")
    await sock.wait_welcome()
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.post(f"{two.http_url}/api/publish", json={"user": "alice", "data": 0})
        assert r.status_code == 202, r.text
        since = r.json()["id"]
        await sock.wait_data(0)
        await sock.close()
        # Gateway one's users include an alice too; and a broadcast.
        for body in ({"user": "alice", "data": "one"}, {"broadcast": True, "data": "all"}):
            r = await http.post(f"{one.http_url}/api/publish", json=body)
            assert r.status_code == 202, r.text
        r = await http.post(f"{two.http_url}/api/publish", json={"user": "alice", "data": 2})
        assert r.status_code == 202, r.text

    back = await Client.connect(f"{two.ws_url}?user=alice&since={since}", "two-alice")
    welcome = await back.wait_welcome()
    await back.wait_data(2)
    assert welcome["recovered"] is True and welcome["missed"] == 1, welcome
    assert back.data() == [2]
    await back.close()

    streams = {
        q["name"]: q for q in vhost.queues() if q.get("type") == "stream" or "history" in q["name"]
    }
    assert set(streams) == {"one.fanout.history", "two.fanout.history"}, set(streams)
    # Replicated where there are nodes to replicate to; a single node takes it as is.
    for q in streams.values():
        assert q["arguments"]["x-initial-cluster-size"] == 3


@pytest.mark.timeout(30)
async def test_operator_management_calls_skip_a_node_that_is_down(
    vhost: Vhost, pod_factory: PodFactory
) -> None:
    """The operator's management URL may list every node: a dead one is skipped."""
    from testkit.net import free_port

    dead = f"http://guest:guest@127.0.0.1:{free_port('127.0.0.1')}"
    live = "http://guest:guest@" + vhost.rabbit.mgmt_url.split("://", 1)[1]
    assert vhost_of(f"amqp://u:p@a:5672/{vhost.quoted},amqp://u:p@b:5672/{vhost.quoted}") == (
        vhost.name
    )
    async with Management(f"{dead},{live}", timeout=3) as mgmt:
        # The vhost has no queues yet; a pod declares one (classic: it outlives the
        # pod, as the queues the operator deletes do; an exclusive one goes with it).
        args = ["--auth", "none", "--pod-queue-type", "classic"]
        (gw,) = pod_factory(1, "mgmt", amqp_url=vhost.amqp_url, args=args, timeout=30)
        try:
            queues = await wait_for(
                lambda: mgmt.queues(vhost.name, "clarion.pod."), 10, 0.3, "the pod's queue"
            )
            assert [q.name for q in queues] == [f"clarion.pod.{gw.pod_name}"]
        finally:
            gw.kill()
        assert await mgmt.delete_queue(vhost.name, f"clarion.pod.{gw.pod_name}") is True
        assert await mgmt.delete_queue(vhost.name, f"clarion.pod.{gw.pod_name}") is False
