"""What the cluster-wide features cost: presence queries and history queries.

    .venv/bin/python -m bench.features              # 3 and 8 pods, about 1 minute

Presence: pods of ``clarion serve`` on RabbitMQ (their own vhost), 50 sockets
subscribed to one channel spread over them; then sequential ``GET
/api/presence`` queries on pod 0: latency (median, p95) and the CPU of every
pod and of RabbitMQ per query (psutil, before and after). History: a channel
with 1,000 messages among 10,000 in the window, ``GET /api/history`` with a
limit of 100, from the start of the window and with a ``since`` 100 messages
from the end: latency medians.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import websockets

from .servers import broker_pid, cpu_seconds, start_system

API = "k"  # the bench's pods run with --auth none: the API is open


def _quantiles(values: list[float]) -> tuple[float, float]:
    values = sorted(values)
    return statistics.median(values), values[int(len(values) * 0.95) - 1]


async def presence(pods: int, queries: int, log_dir: Path) -> dict[str, Any]:
    system = start_system("clarion", pods, log_dir, env={"CLARION_PRESENCE_INTERVAL": "1"})
    try:
        channel = "room"
        sockets = []
        for i in range(50):
            host, port = system.addrs[i % pods]
            ws = await websockets.connect(f"ws://{host}:{port}/ws?user=u{i % 20}")
            await ws.recv()
            await ws.send(f'{{"type":"subscribe","channel":"{channel}"}}')
            await ws.recv()
            sockets.append(ws)
        host, port = system.addrs[0]
        url = f"http://{host}:{port}/api/presence"
        async with httpx.AsyncClient(timeout=10) as http:
            deadline = time.monotonic() + 20
            while True:  # until every pod knows every other
                answer = (await http.get(url, params={"channel": channel})).json()
                if len(answer["answered"]) == pods and not answer["missing"]:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"pods do not know each other: {answer}")
                await asyncio.sleep(0.2)
            pids = system.pids
            rabbit = broker_pid()
            cpu0 = cpu_seconds(pids)
            rcpu0 = cpu_seconds([rabbit]) if rabbit else 0.0
            took = []
            for _ in range(queries):
                t = time.perf_counter()
                r = await http.get(url, params={"channel": channel})
                took.append(time.perf_counter() - t)
                assert sum(r.json()["users"].values()) == 50, r.text
            cpu = cpu_seconds(pids) - cpu0
            rcpu = (cpu_seconds([rabbit]) - rcpu0) if rabbit else float("nan")
        for ws in sockets:
            await ws.close()
        p50, p95 = _quantiles(took)
        return {
            "pods": pods,
            "queries": queries,
            "latency_p50_ms": round(p50 * 1000, 2),
            "latency_p95_ms": round(p95 * 1000, 2),
            "pods_cpu_ms_per_query": round(cpu / queries * 1000, 2),
            "rabbitmq_cpu_ms_per_query": round(rcpu / queries * 1000, 2),
        }
    finally:
        system.stop()


async def history(log_dir: Path) -> dict[str, Any]:
    system = start_system("clarion", 2, log_dir)
    try:
        host, port = system.addrs[1]
        base = f"http://{host}:{port}"
        async with httpx.AsyncClient(timeout=30) as http:
            ids = []
            for i in range(100):
                batch = [
                    {"channel": "hot" if j == 0 else f"c{j}", "data": i * 10 + j} for j in range(10)
                ]
                r = await http.post(f"{base}/api/publish", json={"messages": batch})
                ids.append(r.json()["ids"][0])
            results = {}
            for label, params in (
                ("from_window_start", {"channel": "hot", "limit": "100"}),
                ("since_100_back", {"channel": "hot", "since": ids[-100], "limit": "100"}),
            ):
                took = []
                for _ in range(10):
                    t = time.perf_counter()
                    r = await http.get(f"{base}/api/history", params=params)
                    took.append(time.perf_counter() - t)
                    assert r.status_code == 200, r.text
                results[label + "_p50_ms"] = round(statistics.median(took) * 1000, 1)
            return {"window_messages": 1000, **results}
    finally:
        system.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.features", description=__doc__)
    p.add_argument("--pods", default="3,8", help="pod counts for presence")
    p.add_argument("--queries", type=int, default=100)
    args = p.parse_args(argv)
    log_dir = Path(tempfile.mkdtemp(prefix="clarion-features-"))
    for n in (int(x) for x in args.pods.split(",")):
        print("presence", asyncio.run(presence(n, args.queries, log_dir)), flush=True)
    print("history", asyncio.run(history(log_dir)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
