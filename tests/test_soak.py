"""A one-minute soak: hundreds of sockets, a steady publish stream, a broker
restart and a pod kill in the middle. Asserts what a user would notice: every
message that got a 202 reaches every matching socket exactly once, and the
surviving pods' memory does not run away. (A longer version: bench/soak.py.)
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from pathlib import Path

import httpx
import pytest

from .private_broker import PrivateBroker
from .support import PodFactory, wait_for
from .wsclient import User

# bench/soak.py runs this same test bigger and longer through these variables.
SOAK_TIMEOUT = int(os.environ.get("CLARION_SOAK_TIMEOUT", "180"))
pytestmark = [pytest.mark.timeout(SOAK_TIMEOUT), pytest.mark.slow, pytest.mark.both_routings]

SOCKETS = int(os.environ.get("CLARION_SOAK_SOCKETS", "300"))
RATE = float(os.environ.get("CLARION_SOAK_RATE", "60"))  # publishes per second
PHASE = int(os.environ.get("CLARION_SOAK_PHASE", "150"))  # accepted messages per phase


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def test_soak_broker_restart_and_pod_kill_lose_nothing(
    private_broker: PrivateBroker, pod_factory: PodFactory, routing: str
) -> None:
    broker = private_broker
    args = ["--auth", "none", "--max-frames-per-second", "1000"]
    hosts = [f"127.0.0.{30 + i}" for i in range(3)]
    with pod_factory(
        3, "soak", amqp_url=broker.amqp_url, args=args, hosts=hosts, routing=routing, timeout=30
    ) as pods:
        a, b, victim = pods
        users = [User(f"s{i}") for i in range(SOCKETS)]
        for i, u in enumerate(users):
            await u.connect(pods[i % 3].ws_url, timeout=20)

        # accepted[id] = the users that must get it (None: everyone)
        accepted: dict[str, str | None] = {}
        refused = 0
        stop = asyncio.Event()
        rng = random.Random(11)

        async def publisher() -> None:
            nonlocal refused
            async with httpx.AsyncClient(timeout=10) as api:
                n = 0
                while not stop.is_set():
                    n += 1
                    pod = rng.choice([a, b])  # the victim is not an entry point
                    broadcast = n % 10 == 0
                    user = None if broadcast else rng.choice(users).name
                    body = {"broadcast": True} if broadcast else {"user": user}
                    body["data"] = n  # type: ignore[assignment]
                    try:
                        r = await api.post(f"{pod.http_url}/api/publish", json=body)
                    except httpx.HTTPError:
                        refused += 1
                    else:
                        if r.status_code == 202:
                            accepted[r.json()["id"]] = user
                        else:
                            assert r.status_code == 503, r.text
                            refused += 1
                    await asyncio.sleep(1 / RATE)

        # Every socket has a first message: a `since` to come back with.
        async with httpx.AsyncClient(timeout=10) as api:
            r = await api.post(f"{a.http_url}/api/publish", json={"broadcast": True, "data": 0})
            accepted[r.json()["id"]] = None
        for u in users:
            assert u.client is not None
            await wait_for(lambda u=u: u.client.messages, 20, message="first broadcast")

        rss_before = {p.pod_name: rss_kib(p.proc.pid) for p in (a, b)}  # type: ignore[union-attr]
        task = asyncio.create_task(publisher())
        t0 = time.monotonic()
        phase_s = max(30.0, 4 * PHASE / RATE)
        await wait_for(lambda: len(accepted) > PHASE, phase_s, message="steady publishing")

        # 1. The broker restarts: publishing answers 503 meanwhile, sockets stay.
        broker.stop()
        await wait_for(lambda: not a.ready() and not b.ready(), 15, message="pods unready")
        # The publisher is sequential: once it saw a refusal, nothing older is in flight.
        refused_before = refused
        await wait_for(lambda: refused > refused_before, 15, message="a 503 from the API")
        outage_accepted = len(accepted)
        await asyncio.sleep(1.0)  # a real outage lasts: keep publishing into it
        assert len(accepted) == outage_accepted, "a publish was accepted while the broker was down"
        broker.start()
        await wait_for(lambda: all(p.ready() for p in pods), 40, 0.2, "pods ready again")
        assert all(u.client is not None and not u.client.closed for u in users)
        await wait_for(lambda: len(accepted) > outage_accepted + PHASE, phase_s, message="resumed")

        # 2. A pod is killed: its users come back on the others with since=.
        victim.signal(signal.SIGKILL)
        orphans = [u for i, u in enumerate(users) if i % 3 == 2]
        for u in orphans:
            assert u.client is not None
            await u.client.wait_closed(15)
            u.drain()
        for i, u in enumerate(orphans):
            await u.connect((a if i % 2 else b).ws_url, timeout=20)
        await wait_for(
            lambda: len(accepted) > outage_accepted + 8 * PHASE // 3,
            phase_s * 2,
            message="more traffic",
        )
        stop.set()
        await task
        elapsed = time.monotonic() - t0

        broadcasts = {mid for mid, who in accepted.items() if who is None}
        targeted: dict[str, set[str]] = {u.name: set() for u in users}
        for mid, who in accepted.items():
            if who is not None:
                targeted[who].add(mid)

        def missing(u: User) -> set[str]:
            got = set(u.ids)
            return (broadcasts - got) | (targeted[u.name] - got)

        def complete() -> bool:
            for u in users:
                u.drain()
            return not any(missing(u) for u in users)

        await wait_for(complete, max(40.0, SOCKETS / 25), 0.5, "every accepted message delivered")
        duplicates = sum(len(u.ids) - len(set(u.ids)) for u in users)
        lost = sum(len(missing(u)) for u in users)
        deliveries = sum(len(broadcasts) + len(targeted[u.name]) for u in users)
        rss_after = {p.pod_name: rss_kib(p.proc.pid) for p in (a, b)}  # type: ignore[union-attr]
        print(
            f"\nsoak: {elapsed:.0f}s, {SOCKETS} sockets, {len(accepted)} messages accepted (202), "
            f"{refused} refused (503 during the outage), {deliveries} deliveries expected, "
            f"lost {lost}, duplicates {duplicates}, "
            f"{sum(u.reconnects for u in users)} reconnects with since=; "
            f"RSS KiB before {rss_before} after {rss_after}"
        )
        assert lost == 0
        assert duplicates == 0
        assert refused > 0, "the outage was not observed by the publisher"
        # Measured here: +4 MiB per pod at the suite's size (a quarter of the bound).
        # The growth a long soak showed came from concurrent since= replays each
        # reading the stream (now shared: tests/test_replay_storm.py bounds it).
        for name, before in rss_before.items():
            assert rss_after[name] < before + 16 * 1024, (
                f"{name} grew {before} -> {rss_after[name]}"
            )
        for u in users:
            await u.close()
