"""Publishers: an AMQP burst in each system's own format, and paced HTTP publishes.

S1 publishes straight into each system's fanout exchange from the bench
process, so the pods' CPU is spent on delivery only; S1-API posts the same
broadcasts to Clarion's ``POST /api/publish`` back to back, a few requests in
flight, as a backend does (``http_burst``). S2 goes through each
system's HTTP publish endpoint at a fixed rate (open loop: a message's
timestamp is when it was due, so client-side queueing counts as latency).
Every payload starts with ``"t"``, the publish time, then ``"s"``, a sequence
number, then padding to a realistic notification size.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import aio_pika
import orjson

SIO_EXCHANGE = "socketio"
RAW_EXCHANGE = "bench.raw"
BROKER_EXCHANGE = "bench.broker"


def payload(seq: int, pad: int) -> dict[str, Any]:
    return {"t": time.time(), "s": seq, "p": "x" * pad}


def _message(kind: str, seq: int, pad: int) -> aio_pika.Message:
    data = payload(seq, pad)
    if kind == "clarion":
        from clarion.broker.rabbitmq import envelope_to_message
        from clarion.protocol import Envelope, Target

        return envelope_to_message(Envelope.create(Target("broadcast"), data))
    if kind == "sio":
        # What AsyncAioPikaManager publishes for ``sio.emit("m", data)``.
        body = {
            "method": "emit",
            "event": "m",
            "data": [data],
            "binary": False,
            "namespace": "/",
            "room": None,
            "skip_sid": None,
            "callback": None,
            "host_id": "bench-publisher",
        }
        return aio_pika.Message(orjson.dumps(body), delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
    return aio_pika.Message(orjson.dumps(data), delivery_mode=aio_pika.DeliveryMode.PERSISTENT)


_EXCHANGES = {
    "clarion": ("clarion.fanout", True),
    "sio": (SIO_EXCHANGE, False),
    "raw": (RAW_EXCHANGE, True),
    "broker": (BROKER_EXCHANGE, True),
}


async def amqp_burst(
    url: str, kind: str, count: int, pad: int, rate: float | None = None
) -> tuple[float, float]:
    """Publish ``count`` broadcasts as fast as possible (or at ``rate``/s).

    Returns the wall-clock times of the first and the last publish.
    """
    name, durable = _EXCHANGES[kind]
    conn = await aio_pika.connect(url)
    try:
        ch = await conn.channel(publisher_confirms=False)
        ex = await ch.declare_exchange(name, aio_pika.ExchangeType.FANOUT, durable=durable)
        first = time.time()
        for i in range(count):
            if rate:
                due = first + i / rate
                pause = due - time.time()
                if pause > 0:
                    await asyncio.sleep(pause)
            await ex.publish(_message(kind, i, pad), routing_key="")
        last = time.time()
        # A confirm round trip: everything before it has reached the broker.
        ch2 = await conn.channel(publisher_confirms=True)
        ex2 = await ch2.declare_exchange("bench.sync", aio_pika.ExchangeType.FANOUT)
        await ex2.publish(aio_pika.Message(b"sync"), routing_key="")
        return first, last
    finally:
        await conn.close()


class _HttpConn:
    """One keep-alive HTTP/1.1 connection: the cheapest client that is still honest."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> int:
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(
            (
                f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode()
            + body
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        chunked = False
        close = False
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            k = k.strip().lower()
            if k == b"content-length":
                length = int(v)
            elif k == b"connection" and v.strip().lower() == b"close":
                close = True
            elif k == b"transfer-encoding" and b"chunked" in v.lower():
                chunked = True
        if chunked:
            await self.reader.readuntil(b"0\r\n\r\n")
        elif length:
            await self.reader.readexactly(length)
        if close:
            self.writer.close()
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def http_burst(
    targets: list[tuple[str, int]], count: int, pad: int, inflight: int = 4
) -> dict[str, Any]:
    """POST ``count`` broadcasts back to back, ``inflight`` requests at a time, as a backend does.

    ``inflight`` keep-alive connections, spread round-robin over the pods (a
    Kubernetes Service in front of them), each sending its next request as soon
    as the previous one is answered (202 comes after the broker's confirm).
    Every message's ``"t"`` is when its request was sent, so the API's time is
    part of the delivery latency.
    """
    conns = [_HttpConn(*targets[k % len(targets)]) for k in range(inflight)]
    seqs = iter(range(count))
    statuses: dict[int, int] = {}
    kinds: dict[str, int] = {}
    answered: list[float] = []  # request sent -> HTTP answer, seconds

    async def worker(conn: _HttpConn) -> None:
        for i in seqs:
            sent = time.time()
            data = {"t": sent, "s": i, "p": "x" * pad}
            body = orjson.dumps({"broadcast": True, "data": data})
            try:
                status = await asyncio.wait_for(conn.post("/api/publish", body), 10)
                statuses[status] = statuses.get(status, 0) + 1
                answered.append(time.time() - sent)
            except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
                kinds[type(exc).__name__] = kinds.get(type(exc).__name__, 0) + 1
                conn.close()
                conn.writer = None

    first = time.time()
    try:
        await asyncio.gather(*(worker(c) for c in conns))
    finally:
        for c in conns:
            c.close()
    return {
        "sent": count,
        "accepted": statuses.get(202, 0),
        "statuses": statuses,
        "error_kinds": kinds,
        "answered": answered,
        "first": first,
        "last": time.time(),
    }


async def http_paced(
    targets: list[tuple[str, int]],
    users: int,
    rate: float,
    duration: float,
    pad: int,
    pool: int = 32,
    seed: int = 1,
) -> dict[str, Any]:
    """POST ``{"user": u<random>, "data": ...}`` at ``rate``/s, round-robin over the pods."""
    rnd = random.Random(seed)
    pools: list[asyncio.Queue[_HttpConn]] = []
    for host, port in targets:
        q: asyncio.Queue[_HttpConn] = asyncio.Queue()
        for _ in range(pool):
            q.put_nowait(_HttpConn(host, port))
        pools.append(q)
    total = int(rate * duration)
    statuses: dict[int, int] = {}
    kinds: dict[str, int] = {}
    answered: list[float] = []  # due -> HTTP answer, seconds
    errors = 0

    async def one(i: int, due: float) -> None:
        nonlocal errors
        data = {"t": due, "s": i, "p": "x" * pad}
        body = orjson.dumps({"user": f"u{rnd.randrange(users)}", "data": data})
        q = pools[i % len(pools)]
        conn = await q.get()
        try:
            status = await asyncio.wait_for(conn.post("/api/publish", body), 10)
            statuses[status] = statuses.get(status, 0) + 1
            answered.append(time.time() - due)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
            errors += 1
            kinds[type(exc).__name__] = kinds.get(type(exc).__name__, 0) + 1
            conn.close()
            conn.writer = None
        finally:
            q.put_nowait(conn)

    tasks = []
    start = time.time() + 0.05
    for i in range(total):
        due = start + i / rate
        pause = due - time.time()
        if pause > 0:
            await asyncio.sleep(pause)
        tasks.append(asyncio.create_task(one(i, due)))
    await asyncio.gather(*tasks)
    for q in pools:
        while not q.empty():
            q.get_nowait().close()
    return {
        "sent": total,
        "accepted": statuses.get(202, 0),
        "statuses": statuses,
        "errors": errors,
        "error_kinds": kinds,
        "answered": answered,
        "first": start,
        "last": time.time(),
    }
