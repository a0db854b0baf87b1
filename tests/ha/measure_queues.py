"""What each kind of pod queue costs on a three-node cluster (docs/broker-ha.md's numbers).

    .venv/bin/python -m tests.ha.measure_queues

Boots the tests' own three-node cluster, then for each pod-queue type the gateway
supports (``classic``: transient, caught up from the stream after a node loss;
``quorum``: replicated) and 2, 4 and 8 pods, builds the gateway's topology in a
fresh vhost (the fanout exchange, the replicated history stream, one queue per pod
declared through a different node each, with a consumer acking in batches as a
pod does) and publishes with confirms from one connection: sequentially (confirm
latency) and with 16 in flight (throughput), reading the three nodes' CPU time
from /proc for the cost per message.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from dataclasses import replace

import aio_pika

from clarion.broker.codec import envelope_to_message
from clarion.broker.topology import history_arguments, queue_arguments
from clarion.config import Settings
from clarion.gateway import broker_options
from clarion.message import Envelope, Target
from clarion.names import EXCHANGE, history_queue

from .cluster import HaCluster, beam_pids
from .test_failover import vhost_on

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / TICK


async def measure(cluster: HaCluster, kind: str, pods: int) -> dict[str, float]:
    vhost = vhost_on(cluster)
    vhost.create()
    base = broker_options(Settings.from_env({}, pod_name="m"))
    options = replace(base, pod_queue_type=kind)
    conns: list[aio_pika.abc.AbstractConnection] = []
    try:
        pub_conn = await aio_pika.connect(f"{cluster.nodes[0].url}{vhost.quoted}")
        conns.append(pub_conn)
        pub = await pub_conn.channel(publisher_confirms=True)
        exchange = await pub.declare_exchange(EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=True)
        stream = await pub.declare_queue(
            history_queue(EXCHANGE), durable=True, arguments=history_arguments(options)
        )
        await stream.bind(exchange)
        for i in range(pods):
            node = cluster.nodes[i % len(cluster.nodes)]
            conn = await aio_pika.connect(f"{node.url}{vhost.quoted}")
            conns.append(conn)
            ch = await conn.channel()
            await ch.set_qos(prefetch_count=1024)
            q = await ch.declare_queue(
                f"clarion.pod.m{i}",
                durable=kind == "quorum",
                arguments=queue_arguments(options),
            )
            await q.bind(exchange)

            async def on_message(m: aio_pika.abc.AbstractIncomingMessage) -> None:
                if m.delivery_tag % 64 == 0:
                    await m.ack(multiple=True)

            await q.consume(on_message)

        def message() -> aio_pika.Message:
            return envelope_to_message(Envelope.create(Target("broadcast", None), {"x": "y" * 150}))

        for _ in range(200):  # warm up
            await exchange.publish(message(), routing_key="")
        lat = []
        for _ in range(500):
            t = time.perf_counter()
            await exchange.publish(message(), routing_key="")
            lat.append(time.perf_counter() - t)
        pids = list(beam_pids(cluster.names).values())
        n, in_flight = 3000, 16
        sem = asyncio.Semaphore(in_flight)

        async def one() -> None:
            async with sem:
                await exchange.publish(message(), routing_key="")

        cpu0, t0 = cpu_seconds(pids), time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        wall, cpu = time.perf_counter() - t0, cpu_seconds(pids) - cpu0
        lat.sort()
        return {
            "p50_ms": statistics.median(lat) * 1000,
            "p99_ms": lat[int(len(lat) * 0.99)] * 1000,
            "rate": n / wall,
            "cpu_us": cpu / n * 1e6,
        }
    finally:
        for c in conns:
            await c.close()
        vhost.delete()


async def main() -> None:
    with HaCluster() as cluster:
        print(f"3 nodes up in {cluster.boot_seconds:.1f}s")
        print(
            "| pod queues | pods | confirm p50 | p99 | publishes/s (16 in flight) "
            "| RabbitMQ CPU per message (3 nodes) |"
        )
        print("|---|---|---|---|---|---|")
        for kind in ("classic", "quorum"):
            for pods in (2, 4, 8):
                r = await measure(cluster, kind, pods)
                print(
                    f"| {kind} | {pods} | {r['p50_ms']:.2f} ms | {r['p99_ms']:.2f} ms | "
                    f"{r['rate']:,.0f} | {r['cpu_us']:,.0f} µs |"
                )


if __name__ == "__main__":
    asyncio.run(main())
