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
        from clarion.message import Envelope, Target

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
        return (await self.exchange(path, body))[0]

    async def exchange(self, path: str, body: bytes) -> tuple[int, bytes]:
        """POST ``body``; the answer's status and body."""
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
        answer = b""
        if chunked:
            answer = await self.reader.readuntil(b"0\r\n\r\n")
        elif length:
            answer = await self.reader.readexactly(length)
        if close:
            self.writer.close()
        return status, answer

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


class LivePublisher:
    """Targeted messages at a fixed rate to random users, each through a random live pod.

    A backend during a deploy: the pods behind the Service change under it
    (``live`` is replaced as pods come and go), every 202 is recorded with its
    id, target and time, and every other answer or failure is counted, never
    taken as accepted. ``inflight`` senders keep one keep-alive connection per
    pod each; a message's due time is fixed in advance (open loop), so a slow
    API shows as a lower achieved rate, not as a gap in the schedule.
    """

    def __init__(
        self,
        users: int,
        rate: float,
        live: list[tuple[str, int]],
        pad: int = 200,
        inflight: int = 8,
        seed: int = 7,
    ) -> None:
        self.users = users
        self.rate = rate
        self.live = list(live)
        self.pad = pad
        self.inflight = inflight
        self.rng = random.Random(seed)
        #: (message id, user index, request sent, 202 received), wall-clock seconds.
        self.accepted: list[tuple[str, int, float, float]] = []
        self.statuses: dict[int, int] = {}
        self.failures: dict[str, int] = {}
        self.sent = 0
        self.first = 0.0
        self.last = 0.0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        self.first = time.time() + 0.02
        seqs = iter(range(1 << 62))
        await asyncio.gather(*(self._sender(seqs) for _ in range(self.inflight)))
        self.last = time.time()

    async def _sender(self, seqs: Any) -> None:
        conns: dict[tuple[str, int], _HttpConn] = {}
        try:
            for i in seqs:
                due = self.first + i / self.rate
                await asyncio.sleep(max(0.0, due - time.time()))
                if self._stop.is_set():
                    return
                for gone in set(conns) - set(self.live):
                    conns.pop(gone).close()
                addr = self.rng.choice(self.live)
                conn = conns.get(addr) or conns.setdefault(addr, _HttpConn(*addr))
                user = self.rng.randrange(self.users)
                sent = time.time()
                data = {"t": sent, "s": i, "p": "x" * self.pad}
                body = orjson.dumps({"user": f"u{user}", "data": data})
                self.sent += 1
                try:
                    status, answer = await asyncio.wait_for(conn.exchange("/api/publish", body), 10)
                except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
                    name = type(exc).__name__
                    self.failures[name] = self.failures.get(name, 0) + 1
                    conns.pop(addr).close()
                    continue
                self.statuses[status] = self.statuses.get(status, 0) + 1
                if status == 202:
                    self.accepted.append((orjson.loads(answer)["id"], user, sent, time.time()))
        finally:
            for c in conns.values():
                c.close()
