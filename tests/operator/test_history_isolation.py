"""Two gateways in one vhost, with the exchanges the operator gives them: neither replays
the other's messages with since= (real RabbitMQ, real gateway processes)."""

from __future__ import annotations

import httpx
import pytest

from clarion_operator import resources
from clarion_operator.spec import GatewaySpec
from tests.support import GatewayProcess, PodFactory, Vhost
from tests.wsclient import Client

pytestmark = pytest.mark.timeout(60)

OWNER = {"metadata": {"name": "x", "uid": "u"}}


def exchange_of(gateway: str) -> str:
    """CLARION_EXCHANGE as the operator writes it into the gateway's pods."""
    dep = resources.deployment(gateway, "apps", GatewaySpec.parse({"image": "i"}), OWNER, 2)
    env = dep["spec"]["template"]["spec"]["containers"][0]["env"]
    return str(next(e["value"] for e in env if e["name"] == "CLARION_EXCHANGE"))


@pytest.fixture
def two_gateways(vhost: Vhost, pod_factory: PodFactory) -> dict[str, GatewayProcess]:
    procs = {
        name: pod_factory(
            names=[f"{name}-5d8c7b9f4-x{i}"],
            hosts=[f"127.0.0.{30 + i}"],
            amqp_url=vhost.amqp_url,
            args=["--auth", "none", "--exchange", exchange_of(name), "--drain-delay", "0"],
            start=False,
        )[0]
        for i, name in enumerate(("push", "billing"))
    }
    pod_factory.start(list(procs.values()), timeout=30)
    return procs


async def test_history_does_not_leak_between_gateways(
    two_gateways: dict[str, GatewayProcess], vhost: Vhost
) -> None:
    push, billing = two_gateways["push"], two_gateways["billing"]
    assert exchange_of("push") != exchange_of("billing")

    async with httpx.AsyncClient(timeout=10) as api:

        async def publish(pod: GatewayProcess, data: str) -> str:
            r = await api.post(f"{pod.http_url}/api/publish", json={"user": "u", "data": data})
            assert r.status_code == 202, r.text
            return str(r.json()["id"])

        # Both histories reach back before `first`, so both can answer since=first.
        await publish(billing, "billing-0")
        first = await publish(push, "push-0")
        await publish(push, "push-1")
        await publish(billing, "billing-1")
        await publish(push, "push-2")

    async def replay(pod: GatewayProcess) -> tuple[dict[str, object], list[str]]:
        client = await Client.connect(f"{pod.ws_url}?user=u&since={first}", "u")
        welcome = await client.wait_welcome()
        missed = int(welcome["missed"])
        await client.until(lambda: len(client.messages) >= missed, what="replay")
        await client.close()
        return welcome, [str(d) for d in client.data()]

    welcome, data = await replay(push)
    assert welcome["recovered"] is True and data == ["push-1", "push-2"]
    # billing's history never had push's message: it does not know the id, and what it
    # replays from that time on is its own messages only (a shared stream gave all four).
    welcome, data = await replay(billing)
    assert (welcome["recovered"], welcome.get("reason")) == (False, "unknown")
    assert data == ["billing-1"]
    streams = {q["name"] for q in vhost.queues() if q["name"].endswith(".history")}
    assert streams == {exchange_of("push") + ".history", exchange_of("billing") + ".history"}
