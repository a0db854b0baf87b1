"""What webhooks cost: event latency and pod CPU per socket, three pods on RabbitMQ.

    .venv/bin/python -m bench.webhooks [--sockets 600]

Each socket connects to one of three pods (round robin), subscribes to a channel
of its own and closes: two events for the channel and two for its user, each
decided by the name's owner. It prints the time from the ``subscribed`` reply to
the receiver getting ``channel_occupied`` (p50, p95), and the pods' CPU for the
whole run with webhooks off, with ``--join-leave`` alone (the aggregation without
HTTP) and with webhooks (and join/leave) on.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from tests.support import GatewayProcess, Vhost, started
from tests.test_webhooks import Receiver, all_know_each_other, connect, hook_args

PLAIN = ["--auth", "none", "--api-key", "k", "--presence-interval", "1"]


async def run(sockets: int, hooks: bool, join_leave: bool = False) -> tuple[float, list[float]]:
    vhost, receiver = Vhost().create(), Receiver()
    args = hook_args(receiver.url) if hooks else PLAIN + ["--join-leave"] * join_leave
    pods = [
        GatewayProcess(
            f"wh-{i}-{uuid.uuid4().hex[:4]}",
            amqp_url=vhost.amqp_url,
            args=args,
            log_dir=Path(tempfile.gettempdir()),
        )
        for i in range(3)
    ]
    latencies: list[float] = []
    try:
        with started(pods, kill=True):
            await all_know_each_other(pods)
            cpu0 = sum(p.metric("process_cpu_seconds_total") for p in pods)
            for n in range(sockets):
                channel = f"bench-{n}"
                c = await connect(pods[n % 3], f"u{n}", channel)
                subscribed = time.monotonic()
                if hooks:
                    while not receiver.events(channel):
                        await asyncio.sleep(0.0005)
                    latencies.append(time.monotonic() - subscribed)
                await c.close()
            if hooks:
                deadline = time.monotonic() + 20
                while len(receiver.requests) < 4 * sockets and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                assert len(receiver.requests) == 4 * sockets, len(receiver.requests)
            cpu = sum(p.metric("process_cpu_seconds_total") for p in pods) - cpu0
    finally:
        receiver.close()
        vhost.delete()
    return cpu, latencies


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sockets", type=int, default=600)
    n = parser.parse_args().sockets
    off, _ = asyncio.run(run(n, hooks=False))
    jl, _ = asyncio.run(run(n, hooks=False, join_leave=True))
    on, lat = asyncio.run(run(n, hooks=True))
    q = statistics.quantiles(lat, n=20)
    print(f"{n} sockets over 3 pods, each: connect, subscribe, close (4 events)")
    print(f"channel_occupied after subscribed: p50 {q[9] * 1000:.1f} ms, p95 {q[18] * 1000:.1f} ms")
    extra = (on - off) * 1000
    print(
        f"pod CPU, all pods: webhooks off {off:.2f} s, on {on:.2f} s "
        f"(+{extra / n:.2f} ms per socket, {extra / (4 * n):.2f} ms per event)"
    )
    print(
        f"pod CPU with --join-leave alone: {jl:.2f} s (+{(jl - off) * 1000 / n:.2f} ms per socket)"
    )


if __name__ == "__main__":
    main()
