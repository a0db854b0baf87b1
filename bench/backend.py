"""A backend publishing from a process of its own, so its CPU is counted apart.

The Python side of ``bench/node/emitter.js``: the same JSON-line commands on stdin,
the same answers on stdout, so the peers comparison (``bench/peers.py``) drives
every system's publisher alike and takes each one's CPU time from its pid.

- ``clarion``: the shipped ``clarion_client.AsyncPublisher`` (idempotency keys,
  retries, and the coalescing of concurrent publishes into one batch request),
  one publisher per pod, messages round-robin over them (a Service spreads
  connections over the pods). ``--max-batch 1`` turns coalescing off (one request
  per message, as before it existed).
- ``sio``: python-socketio's own backend path, ``AsyncAioPikaManager(write_only=True)``
  emitting into the pods' exchange (what its docs give external processes).

Commands::

    {"cmd": "burst", "count": 500, "pad": 200, "target": "broadcast", "concurrency": 1}
    {"cmd": "burst", "count": 2000, "pad": 200, "target": "user", "users": 400, "concurrency": 16}
    {"cmd": "paced", "users": 400, "rate": 500, "duration": 4, "pad": 200, "seed": 1}

A burst with concurrency 1 is a backend that awaits each publish before the next
(one request after the other); with N, N callers publishing at once. ``paced`` is
open loop: each message is published when it is due, whatever is still in flight.
Answers: ``{"sent", "accepted", "failed", "first", "last", "answered": [seconds]}``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import sys
import time
from typing import Any

import orjson


class _Clarion:
    def __init__(self, urls: list[str], max_batch: int, max_in_flight: int) -> None:
        from clarion_client import AsyncPublisher

        try:
            self.pubs = [
                AsyncPublisher(u, max_batch=max_batch, max_in_flight=max_in_flight) for u in urls
            ]
        except TypeError:  # a revision from before coalescing (--ab): one request per message
            self.pubs = [AsyncPublisher(u) for u in urls]
        self._next = itertools.cycle(self.pubs)

    async def send(self, data: dict[str, Any], user: str | None) -> None:
        pub = next(self._next)
        if user is None:
            await pub.publish(data, broadcast=True)
        else:
            await pub.publish(data, user=user)

    async def close(self) -> None:
        for p in self.pubs:
            await p.aclose()


class _Sio:
    def __init__(self, amqp_url: str) -> None:
        import socketio

        self.mgr = socketio.AsyncAioPikaManager(amqp_url, channel="socketio", write_only=True)

    async def send(self, data: dict[str, Any], user: str | None) -> None:
        await self.mgr.emit("m", data, room=user, namespace="/")

    async def close(self) -> None:
        conn = getattr(self.mgr, "publisher_connection", None)
        if conn is not None:
            await conn.close()


async def _burst(sys_: Any, cmd: dict[str, Any]) -> dict[str, Any]:
    count, pad = int(cmd["count"]), int(cmd.get("pad", 200))
    users = int(cmd.get("users", 0))
    targeted = cmd.get("target", "broadcast") == "user"
    rnd = random.Random(int(cmd.get("seed", 1)))
    seqs = iter(range(count))
    answered: list[float] = []
    failed = 0

    async def caller() -> None:
        nonlocal failed
        for i in seqs:
            sent = time.time()
            user = f"u{rnd.randrange(users)}" if targeted else None
            try:
                await sys_.send({"t": sent, "s": i, "p": "x" * pad}, user)
                answered.append(time.time() - sent)
            except Exception:
                failed += 1

    first = time.time()
    await asyncio.gather(*(caller() for _ in range(int(cmd.get("concurrency", 1)))))
    return _answer(count, failed, first, answered)


async def _paced(sys_: Any, cmd: dict[str, Any]) -> dict[str, Any]:
    rate, users, pad = float(cmd["rate"]), int(cmd["users"]), int(cmd.get("pad", 200))
    total = int(rate * float(cmd["duration"]))
    rnd = random.Random(int(cmd.get("seed", 1)))
    answered: list[float] = []
    failed = 0

    async def one(i: int, due: float, user: str) -> None:
        nonlocal failed
        try:
            await sys_.send({"t": due, "s": i, "p": "x" * pad}, user)
            answered.append(time.time() - due)
        except Exception:
            failed += 1

    tasks = []
    start = time.time() + 0.05
    for i in range(total):
        due = start + i / rate
        pause = due - time.time()
        if pause > 0:
            await asyncio.sleep(pause)
        tasks.append(asyncio.create_task(one(i, due, f"u{rnd.randrange(users)}")))
    await asyncio.gather(*tasks)
    return _answer(total, failed, start, answered)


def _answer(sent: int, failed: int, first: float, answered: list[float]) -> dict[str, Any]:
    return {
        "sent": sent,
        "accepted": sent - failed,
        "failed": failed,
        "first": first,
        "last": time.time(),
        "answered": answered,
    }


async def _main(args: argparse.Namespace) -> None:
    if args.system == "sio":
        sys_: Any = _Sio(args.amqp_url)
    else:
        sys_ = _Clarion(args.urls.split(","), args.max_batch, args.max_in_flight)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    # Warm up: the first publish opens connections (and, for sio, declares the exchange).
    await sys_.send({"t": time.time(), "s": -1, "p": ""}, "warmup")
    print(orjson.dumps({"ready": True}).decode(), flush=True)
    try:
        while line := await reader.readline():
            if not line.strip():
                continue
            cmd = orjson.loads(line)
            if cmd["cmd"] == "quit":
                break
            out = await (_burst if cmd["cmd"] == "burst" else _paced)(sys_, cmd)
            print(orjson.dumps(out).decode(), flush=True)
    finally:
        await sys_.close()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--system", choices=("clarion", "sio"), required=True)
    p.add_argument("--urls", default="", help="clarion: the pods' base URLs, comma-separated")
    p.add_argument("--amqp-url", default="", help="sio: the pods' vhost")
    p.add_argument("--max-batch", type=int, default=100, help="clarion: 1 turns coalescing off")
    p.add_argument("--max-in-flight", type=int, default=1, help="clarion: requests at once")
    args = p.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(_main(args))


if __name__ == "__main__":
    main()
