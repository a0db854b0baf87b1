"""What the connect and subscribe proxies cost: connects/s through the connect proxy against a
backend answering in 1 ms and 20 ms, and a pod's CPU per subscribe decided by the proxy.

    .venv/bin/python -m bench.proxy [--connects 1000] [--concurrency 50] [--subscribes 2000]

One ``clarion serve`` pod on RabbitMQ (a vhost of its own), the backend in a process of its
own (asyncio HTTP/1.1 with keep-alive; its answer waits ``--delay`` ms without using CPU),
the clients in this process. Each connect is a new WebSocket with a session cookie, counted
once its welcome arrives; the socket is closed at once. Printed: connects/s (first connect
to last welcome), the pod's CPU per connect, the backend's calls; beside them the same
connects with a JWT and no proxy. Then ``--subscribes`` subscribes on 10 sockets to channels
their token does not cover (each asks the subscribe proxy) beside as many covered by the
token: the pod's CPU per subscribe. The machine is shared: load is printed with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
import websockets

from tests.support import GatewayProcess, Vhost, started

SECRET = "bench-proxy-secret-" + "x" * 16
JWT_SECRET = "bench-jwt-secret-" + "y" * 16


def backend(port: int, delay: float, ready: Any) -> None:
    """The application: every connect is let in as its cookie's user, every subscribe
    allowed, after ``delay`` seconds. Signatures are not checked (what they cost the
    backend is not the pod's)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = json.loads(await reader.readexactly(length))
                await asyncio.sleep(delay)
                if body["proxy"] == "connect":
                    user = body["cookies"].get("session", "anon")
                    answer = {"user": user, "channels": ["public.*"]}
                else:
                    answer = {"allow": True}
                raw = json.dumps(answer).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(raw)}\r\n\r\n".encode()
                    + raw
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port)
        ready.set()
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def free_port() -> int:
    from testkit.net import free_port as free

    return free("127.0.0.1")


async def connects(pod: GatewayProcess, n: int, concurrency: int, jwt_auth: bool) -> float:
    """Seconds from the first connect to the last welcome of ``n`` sockets."""
    slots = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with slots:
            url, headers = pod.ws_url, {}
            if jwt_auth:
                tok = jwt.encode({"sub": f"u{i}", "exp": int(time.time()) + 600}, JWT_SECRET)
                url = f"{url}?token={tok}"
            else:
                headers = {"Cookie": f"session=u{i}"}
            async with websockets.connect(url, additional_headers=headers) as ws:
                frame = json.loads(await ws.recv())
                assert frame["type"] == "welcome", frame

    started_at = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return time.perf_counter() - started_at


async def subscribes(pod: GatewayProcess, n: int, prefix: str) -> float:
    """Seconds for ``n`` subscribes over 10 sockets (each waits for its answer)."""
    tok = jwt.encode(
        {"sub": "s", "exp": int(time.time()) + 600, "channels": ["public.*"]}, JWT_SECRET
    )

    async def sock(k: int) -> None:
        async with websockets.connect(f"{pod.ws_url}?token={tok}") as ws:
            assert json.loads(await ws.recv())["type"] == "welcome"
            for i in range(n // 10):
                channel = f"{prefix}.{k}-{i}"
                await ws.send(json.dumps({"type": "subscribe", "channel": channel}))
                answer = json.loads(await ws.recv())
                assert answer["type"] == "subscribed", answer
                await ws.send(json.dumps({"type": "unsubscribe", "channel": channel}))
                assert json.loads(await ws.recv())["type"] == "unsubscribed"

    started_at = time.perf_counter()
    await asyncio.gather(*(sock(k) for k in range(10)))
    return time.perf_counter() - started_at


def cpu(pod: GatewayProcess) -> float:
    return pod.metric("process_cpu_seconds_total")


async def measure(delay_ms: float, args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    ready = multiprocessing.Event()
    proc = multiprocessing.Process(target=backend, args=(port, delay_ms / 1000, ready), daemon=True)
    proc.start()
    ready.wait(10)
    vhost = Vhost().create()
    pod = GatewayProcess(
        f"bench-proxy-{uuid.uuid4().hex[:4]}",
        amqp_url=vhost.amqp_url,
        args=[
            "--jwt-secret", JWT_SECRET, "--public-api",
            "--connect-proxy", f"http://127.0.0.1:{port}/connect",
            "--subscribe-proxy", f"http://127.0.0.1:{port}/subscribe",
            "--proxy-secret", SECRET, "--proxy-cookies", "session",
            "--max-connects-per-second", "0", "--max-frames-per-second", "100000",
            "--max-subscriptions", "100000", "--log-level", "warning",
        ],
        log_dir=Path(tempfile.gettempdir()),
    )  # fmt: skip
    row: dict[str, Any] = {"delay_ms": delay_ms, "load": round(os.getloadavg()[0], 2)}
    try:
        with started([pod], kill=True):
            await connects(pod, 50, 10, jwt_auth=False)  # warm: kept-alive connections
            for label, jwt_auth in (("proxy", False), ("jwt", True)):
                rates, cpus = [], []
                for _ in range(args.reps):
                    before = cpu(pod)
                    seconds = await connects(pod, args.connects, args.concurrency, jwt_auth)
                    rates.append(args.connects / seconds)
                    cpus.append((cpu(pod) - before) / args.connects * 1000)
                row[f"{label}_connects_per_s"] = round(statistics.median(rates))
                row[f"{label}_cpu_ms_per_connect"] = round(statistics.median(cpus), 3)
            for label, prefix in (("proxy", "doc"), ("rights", "public")):
                before = cpu(pod)
                seconds = await subscribes(pod, args.subscribes, prefix)
                row[f"{label}_subscribes_per_s"] = round(args.subscribes / seconds)
                row[f"{label}_cpu_ms_per_subscribe"] = round(
                    (cpu(pod) - before) / args.subscribes * 1000, 3
                )
            calls = pod.metric("clarion_proxy_requests_total", {"result": "allow"})
            row["proxy_calls_allowed"] = int(calls)
    finally:
        proc.kill()
        vhost.delete()
    return row


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.proxy", description=__doc__.split("\n")[0])
    p.add_argument("--connects", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--subscribes", type=int, default=2000)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--delays", default="1,20", help="the backend's answer delays, ms")
    args = p.parse_args()
    print(f"bench.proxy: {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}", flush=True)
    for delay in (float(d) for d in args.delays.split(",")):
        print(json.dumps(asyncio.run(measure(delay, args))), flush=True)


if __name__ == "__main__":
    main()
