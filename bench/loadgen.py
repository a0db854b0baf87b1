"""Load-generator processes: each holds a share of the sockets, driven over a pipe.

The parent (``bench.runner``) starts a few of these with ``multiprocessing``
and sends them commands; each runs its own event loop (uvloop) and answers one
reply per command. The same process can also be an AMQP consumer, which is how
the broker baseline (aio-pika publish -> consume) is measured with the same
bookkeeping as the sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import resource
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from .streamclient import STREAM_DIALECTS, StreamClient
from .wsclient import Stats, WSClient, extract_ts


def raise_nofile() -> int:
    """Lift the soft open-files limit to the hard one (thousands of sockets)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


class Worker:
    """The state of one load-generator process."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.stats = Stats()
        self.clients: list[WSClient | StreamClient] = []
        self.amqp: Any = None
        self.loop = asyncio.get_running_loop()
        self.done = asyncio.Event()

    async def run(self) -> None:
        self.loop.add_reader(self.conn.fileno(), self._on_command)
        await self.done.wait()

    def _on_command(self) -> None:
        try:
            cmd, kw = self.conn.recv()
        except EOFError:
            self.done.set()
            return
        task = self.loop.create_task(self._dispatch(cmd, kw))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _dispatch(self, cmd: str, kw: dict[str, Any]) -> None:
        try:
            result = await getattr(self, "cmd_" + cmd)(**kw)
            reply: tuple[str, Any] = ("ok", result)
        except Exception as exc:
            reply = ("error", repr(exc))
        # The event loop's reader made the pipe non-blocking: a reply bigger than its
        # buffer (the latencies of a long burst) would break off half-way.
        fd = self.conn.fileno()
        os.set_blocking(fd, True)
        try:
            self.conn.send(reply)
        finally:
            os.set_blocking(fd, False)

    # -- commands ------------------------------------------------------------

    async def cmd_connect(
        self,
        targets: list[tuple[str, int]],
        path: str,
        dialect: str,
        count: int,
        first: int = 0,
        concurrency: int = 100,
        deflate: bool = False,
        timeout: float = 60.0,
    ) -> dict[str, Any]:
        """Open ``count`` sockets (user ids ``first``..) and wait until each is ready."""
        sem = asyncio.Semaphore(concurrency)
        loop = self.loop
        stats = self.stats
        ok = 0
        failed = 0
        started = time.time()
        # A WebSocket, or an HTTP stream (``clarion-sse``, ``clarion-stream``).
        client_class = StreamClient if dialect in STREAM_DIALECTS else WSClient

        async def one(i: int) -> None:
            nonlocal ok, failed
            host, port = targets[i % len(targets)]
            async with sem:
                fut: asyncio.Future[bool] = loop.create_future()

                def on_ready(client: Any, good: bool) -> None:
                    if not fut.done():
                        fut.set_result(good)

                try:
                    _, client = await loop.create_connection(
                        lambda: client_class(
                            f"{host}:{port}",
                            path.format(i=i),
                            dialect,
                            stats,
                            on_ready,
                            deflate,
                        ),
                        host,
                        port,
                    )
                    good = await asyncio.wait_for(fut, timeout)
                except (OSError, TimeoutError):
                    good = False
                    client = None
                if good and client is not None:
                    ok += 1
                    stats.ready_times.append(time.time())
                    self.clients.append(client)
                else:
                    failed += 1
                    if client is not None:
                        client.close()

        await asyncio.gather(*(one(first + k) for k in range(count)))
        last = max(stats.ready_times) if len(stats.ready_times) else started
        return {"ok": ok, "failed": failed, "started": started, "last_ready": last}

    async def cmd_count(self) -> dict[str, Any]:
        s = self.stats
        return {
            "received": s.received,
            "last_recv": s.last_recv,
            "open": sum(1 for c in self.clients if c.transport and not c.transport.is_closing()),
        }

    async def cmd_stats(self) -> dict[str, Any]:
        s = self.stats
        return {"received": s.received, "last_recv": s.last_recv, "latencies": s.latencies}

    async def cmd_reset(self) -> None:
        self.stats.reset()

    async def cmd_close_all(self, timeout: float = 10.0) -> int:
        clients, self.clients = self.clients, []
        for c in clients:
            c.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(
            c.transport is not None and not c.transport.is_closing() for c in clients
        ):
            await asyncio.sleep(0.05)
        self.stats.ready_times = type(self.stats.ready_times)("d")
        return len(clients)

    async def cmd_amqp_consume(
        self, url: str, exchange: str, queue: str, prefetch: int = 1024
    ) -> None:
        """Consume a fanout exchange as a pod would (the broker baseline)."""
        import aio_pika

        stats = self.stats
        conn = await aio_pika.connect(url)
        ch = await conn.channel()
        await ch.set_qos(prefetch_count=prefetch)
        ex = await ch.declare_exchange(exchange, aio_pika.ExchangeType.FANOUT, durable=True)
        q = await ch.declare_queue(queue, durable=True, auto_delete=False)
        await q.bind(ex)

        async def on_message(msg: aio_pika.abc.AbstractIncomingMessage) -> None:
            now = time.time()
            stats.received += 1
            stats.last_recv = now
            ts = extract_ts(msg.body.decode())
            if ts is not None:
                stats.latencies.append(now - ts)
            if stats.received % 64 == 0:
                await msg.ack(multiple=True)

        await q.consume(on_message)
        self.amqp = conn

    async def cmd_quit(self) -> None:
        if self.amqp is not None:
            with contextlib.suppress(Exception):
                await self.amqp.close()
        for c in self.clients:
            c.close()
        self.loop.call_later(0.1, self.done.set)


def _main(conn: Connection) -> None:
    raise_nofile()
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass

    async def go() -> None:
        await Worker(conn).run()

    asyncio.run(go())


class LoadGen:
    """The parent's handle on a few load-generator processes."""

    def __init__(self, processes: int, main: Callable[[Connection], None] | None = None) -> None:
        """``main``: what each process runs (default: a ``Worker``'s loop)."""
        ctx = mp.get_context("spawn")
        self.pipes: list[Connection] = []
        self.procs: list[Any] = []
        for _ in range(processes):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=main or _main, args=(child,), daemon=True)
            p.start()
            self.pipes.append(parent)
            self.procs.append(p)

    @property
    def pids(self) -> list[int]:
        return [int(p.pid) for p in self.procs]

    def call(self, cmd: str, per_worker: list[dict[str, Any]] | None = None, **kw: Any) -> list:
        """Send one command to every worker (optionally with per-worker args); gather replies."""
        for i, pipe in enumerate(self.pipes):
            args = dict(kw)
            if per_worker is not None:
                args.update(per_worker[i])
            pipe.send((cmd, args))
        out = []
        for pipe in self.pipes:
            status, value = pipe.recv()
            if status != "ok":
                raise RuntimeError(f"load generator {cmd} failed: {value}")
            out.append(value)
        return out

    def connect(
        self,
        targets: list[tuple[str, int]],
        path: str,
        dialect: str,
        total: int,
        concurrency: int = 100,
        deflate: bool = False,
        user_offset: int = 0,
    ) -> dict[str, Any]:
        """Spread ``total`` sockets over the workers; socket i goes to targets[i % len]."""
        n = len(self.pipes)
        per = []
        first = user_offset
        for k in range(n):
            count = total // n + (1 if k < total % n else 0)
            per.append({"first": first, "count": count})
            first += count
        res = self.call(
            "connect",
            per_worker=per,
            targets=targets,
            path=path,
            dialect=dialect,
            concurrency=concurrency,
            deflate=deflate,
        )
        return {
            "ok": sum(r["ok"] for r in res),
            "failed": sum(r["failed"] for r in res),
            "started": min(r["started"] for r in res),
            "last_ready": max(r["last_ready"] for r in res),
        }

    def received(self) -> tuple[int, float]:
        res = self.call("count")
        return sum(r["received"] for r in res), max(r["last_recv"] for r in res)

    def stats(self) -> tuple[int, float, list[float]]:
        res = self.call("stats")
        lat: list[float] = []
        for r in res:
            lat.extend(r["latencies"])
        return sum(r["received"] for r in res), max(r["last_recv"] for r in res), lat

    def wait_received(self, expected: int, idle_timeout: float = 5.0, cap: float = 120.0) -> int:
        """Poll until ``expected`` messages arrived, or nothing new came for a while."""
        last_n = -1
        last_change = time.monotonic()
        start = last_change
        while True:
            n, _ = self.received()
            now = time.monotonic()
            if n >= expected:
                return n
            if n != last_n:
                last_n, last_change = n, now
            elif now - last_change > idle_timeout or now - start > cap:
                return n
            time.sleep(0.1)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.call("quit")
        for p in self.procs:
            p.join(3)
            if p.is_alive():
                p.kill()
