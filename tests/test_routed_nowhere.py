"""A message the broker routes nowhere is refused (503), never accepted and dropped.

Every message lands in the history stream, bound to the exchange, besides the queues of
the pods holding its target; in direct routing a user with no socket anywhere has no
pod queue, so the stream alone takes the message. If the stream is gone (deleted by
hand, a bad policy), RabbitMQ returns such a message as unroutable and still confirms
it: a 202 then would be a message nobody can ever read, not even through ``since``. The
pod publishes it mandatory and must answer 503, so the backend knows and retries.
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import quote

import httpx
import pytest

from clarion.names import history_queue

from .support import GatewayProcess, PodFactory, Vhost, wait_for_sync
from .wsclient import Client

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def pod(vhost: Vhost, pod_factory: PodFactory) -> Iterator[GatewayProcess]:
    (p,) = pod_factory(1, "nowhere", amqp_url=vhost.amqp_url, routing="direct")
    yield p


def delete_history(vhost: Vhost) -> None:
    stream = quote(history_queue(), safe="")
    with vhost.rabbit.mgmt() as mgmt:
        mgmt.delete(f"/api/queues/{vhost.quoted}/{stream}").raise_for_status()
    wait_for_sync(
        lambda: history_queue() not in {q["name"] for q in vhost.queues()}, 10, 0.2, "no stream"
    )


def publish(pod: GatewayProcess, body: dict[str, object]) -> httpx.Response:
    return httpx.post(f"{pod.http_url}/api/publish", json=body, timeout=15)


async def test_a_message_no_queue_takes_is_refused_not_accepted(
    vhost: Vhost, pod: GatewayProcess
) -> None:
    listener = await Client.connect(f"{pod.ws_url}?user=here", "here")
    try:
        await listener.wait_welcome()
        assert publish(pod, {"user": "here", "data": "before"}).status_code == 202
        delete_history(vhost)

        # To a user nobody holds: no queue at all takes it.
        r = publish(pod, {"user": "nobody", "data": "lost?"})
        assert r.status_code == 503, r.text
        assert r.json()["error"] == "unavailable"
        assert "routed" in r.json()["message"]
        # A batch with one such message is refused whole, as any batch the broker did not
        # take whole (the backend sends it again; pods skip the ids they delivered).
        r = publish(
            pod, {"messages": [{"user": "here", "data": "x"}, {"user": "nobody", "data": "y"}]}
        )
        assert r.status_code == 503, r.text

        # Its neighbours are still taken: a message to a user this pod holds goes to the
        # pod's queue, and the pod serves on.
        r = publish(pod, {"user": "here", "data": "after"})
        assert r.status_code == 202, r.text
        await listener.until(
            lambda: [m["data"] for m in listener.messages][-1:] == ["after"], 10, "after"
        )
    finally:
        await listener.close()
    assert "Traceback" not in pod.log()
