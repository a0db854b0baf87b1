"""A killed pod's clients all coming back with since= at once all recover.

Each replay used to read the history stream on its own: 20 concurrent replays
of 6,000 messages ran past their timeout, every one answered ``recovered:
false``, and the pod kept 65 MiB more. On RabbitMQ, with the stream.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
import websockets

from .support import GatewayProcess, PodFactory, Vhost

pytestmark = pytest.mark.timeout(120)

MESSAGES = 3000
CLIENTS = 60


@pytest.fixture
def pod(vhost: Vhost, pod_factory: PodFactory, routing: str) -> GatewayProcess:
    (p,) = pod_factory(
        1,
        "storm",
        amqp_url=vhost.amqp_url,
        args=["--auth", "none", "--api-key", "k"],
        routing=routing,
    )
    return p


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def test_a_reconnect_storm_recovers_every_client_from_few_reads(pod: GatewayProcess) -> None:
    auth = {"Authorization": "Bearer k"}
    async with httpx.AsyncClient(headers=auth, timeout=10) as http:
        first = await http.post(f"{pod.http_url}/api/publish", json={"broadcast": True, "data": -1})
        since = first.json()["id"]
        ids: list[str] = []
        for i in range(MESSAGES // 100):
            batch = [{"broadcast": True, "data": i * 100 + j} for j in range(100)]
            r = await http.post(f"{pod.http_url}/api/publish", json={"messages": batch})
            assert r.status_code == 202
            ids += r.json()["ids"]
    assert pod.proc is not None
    rss_before = rss_mib(pod.proc.pid)

    async def comeback(i: int) -> list[str]:
        async with websockets.connect(
            f"{pod.ws_url}?user=u{i}&since={since}", max_size=None, open_timeout=20
        ) as ws:
            welcome = json.loads(await asyncio.wait_for(ws.recv(), 30))
            assert welcome["recovered"] is True, welcome
            got = [json.loads(await asyncio.wait_for(ws.recv(), 10))["id"] for _ in ids]
            assert welcome["missed"] == len(ids)
            return got

    results = await asyncio.gather(*(comeback(i) for i in range(CLIENTS)))
    assert all(got == ids for got in results)  # every client, every message, in order, once
    reads = pod.metric("clarion_history_reads_total", {"result": "ok"})
    assert 1 <= reads <= 3, reads  # shared, not one per client
    assert (
        pod.metric("clarion_replays_total", {"scope": "connect", "result": "recovered"}) == CLIENTS
    )
    grew = rss_mib(pod.proc.pid) - rss_before
    print(
        f"\nreplay storm: {CLIENTS} clients x {len(ids)} messages, "
        f"{reads:.0f} reads, RSS +{grew:.1f} MiB"
    )
    assert grew < 20, f"RSS grew {grew:.0f} MiB serving {CLIENTS} replays"
