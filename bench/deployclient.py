"""The deploy scenario's load: recovering clients, and the publisher, in worker processes.

Each client is one user who behaves as docs/failure-modes.md's recovery recipe says: on
any close it reconnects to a random *live* pod after a random 0-1 s (after
1011 or 1013: at least 2 s, randomised, doubling up to about 10 s), with
``?since=<greatest message id received>`` (or the welcome's ``position`` while
nothing is owed: ``advance_since``), reads the welcome's ``recovered``,
``missed`` and ``reason``, and drops duplicates by id. A socket is a bare
``asyncio.Protocol`` (``bench.wsclient.WSClient``), so one process holds
10,000 of them; each process binds its sockets to a source address of its own
(127.0.0.2, 127.0.0.3, ...) so that no process runs out of ports.

What a process records is summed up where it can be (counts, the longest
gap) and otherwise returned in slices (``take``): one reply per command,
never one huge one (see dd38549).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import socket
import struct
import time
from array import array
from collections import Counter
from multiprocessing.connection import Connection
from typing import Any

import orjson

from clarion_client.subscriber import advance_since
from testkit.websocket import OP_CLOSE

from .loadgen import LoadGen, Worker, raise_nofile
from .publish import LivePublisher
from .wsclient import Stats, WSClient

Addr = tuple[str, int]

#: Linux: bind a source address without taking a port until connect(), so the
#: port is chosen per destination (a process's 10,000 sockets and their
#: reconnects do not exhaust one address's ephemeral ports).
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
#: ``Conn.code`` of a connection the client itself gave up on (no welcome in time).
GAVE_UP = -1
#: Close codes after which the recipe backs off (docs/protocol.md's close-code table).
BACK_OFF = (1011, 1013)


def _noop(client: WSClient, ok: bool) -> None:
    pass


class Conn(WSClient):
    """One connection of a ``Client``; reports frames and its end to it."""

    __slots__ = ("code", "owner", "port", "upgraded_at")

    def __init__(self, owner: Client, host: str, port: int, path: str) -> None:
        super().__init__(f"{host}:{port}", path, "clarion", owner.fleet.wsstats, _noop)
        self.owner = owner
        self.port = port
        self.code: int | None = None
        self.upgraded_at = 0.0  # when the 101 arrived
        # Its owner's connection from now on: the welcome may be read before
        # create_connection() returns (uvloop calls data_received first).
        owner.conn = self

    def _frame(self, b0: int, payload: bytes) -> None:
        if b0 & 0x0F == OP_CLOSE and self.code is None:
            self.code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
        super()._frame(b0, payload)

    def data_received(self, data: bytes) -> None:
        if not self.upgraded:
            self.upgraded_at = time.time()
        super().data_received(data)

    def _message(self, text: str) -> None:
        self.owner.on_text(self, text)

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.on_lost(self)


class Client:
    """One user across connections: the recovery recipe, and what it observed."""

    __slots__ = (
        "attempt_t",
        "backoff",
        "conn",
        "down_since",
        "fleet",
        "idx",
        "last_id",
        "seen",
        "since_sent",
        "timer",
        "welcomed",
    )

    def __init__(self, fleet: Fleet, idx: int) -> None:
        self.fleet = fleet
        self.idx = idx
        self.last_id: str | None = None
        self.seen: set[str] = set()
        self.conn: Conn | None = None
        self.welcomed = False
        self.attempt_t = 0.0  # when the current connection attempt started
        self.down_since = 0.0  # when the last welcomed connection ended (0: never up)
        self.backoff = 0
        self.since_sent = False
        self.timer: asyncio.TimerHandle | None = None

    def connect(self, addr: Addr | None = None) -> None:
        """Start one attempt, to ``addr`` or a random live pod."""
        fleet = self.fleet
        self.timer = None
        if fleet.stopping:
            return
        host, port = addr or fleet.rng.choice(fleet.live)
        path = f"/ws?user=u{self.idx}"
        self.since_sent = self.last_id is not None
        if self.last_id is not None:
            path += f"&since={self.last_id}"
        self.welcomed = False
        self.attempt_t = time.time()
        fleet.loop.create_task(self._open(host, port, path))

    async def _open(self, host: str, port: int, path: str) -> None:
        fleet = self.fleet
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            if fleet.source:
                sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind((fleet.source, 0))
            await asyncio.wait_for(fleet.loop.sock_connect(sock, (host, port)), 10)
            _, conn = await fleet.loop.create_connection(
                lambda: Conn(self, host, port, path), sock=sock
            )
        except (OSError, TimeoutError) as exc:
            sock.close()
            self._failed(type(exc).__name__)
            return
        fleet.loop.call_later(fleet.welcome_timeout, self._welcome_timeout, conn)

    def _welcome_timeout(self, conn: Conn) -> None:
        if self.conn is conn and not self.welcomed and conn.transport is not None:
            conn.code = GAVE_UP
            conn.transport.abort()

    def on_text(self, conn: Conn, text: str) -> None:
        if conn is not self.conn:
            return
        fleet = self.fleet
        now = time.time()
        if not self.welcomed:
            frame = orjson.loads(text)
            if frame.get("type") != "welcome":
                return
            self.welcomed = True
            self.backoff = 0
            fleet.on_welcome(self, frame, now)
            self.last_id = advance_since(self.last_id, frame)
            return
        frame = orjson.loads(text)
        if frame.get("type") != "message":
            return
        mid = frame["id"]
        fleet.rec_idx.append(self.idx)
        fleet.rec_id.append(mid)
        fleet.rec_t.append(now)
        if mid in self.seen:
            fleet.duplicates += 1
            return
        self.seen.add(mid)
        if self.last_id is None or mid > self.last_id:
            self.last_id = mid

    def on_lost(self, conn: Conn) -> None:
        if conn is not self.conn:
            return
        fleet = self.fleet
        now = time.time()
        self.conn = None
        code = conn.code if conn.code is not None else (1006 if conn.upgraded else 0)
        if code == GAVE_UP:
            fleet.failures["no welcome in time"] += 1
            self._schedule(0)
            return
        fleet.codes[str(code) if code else "no handshake"] += 1
        if self.welcomed:
            self.welcomed = False
            self.down_since = now
            fleet.conn_close[fleet.conn_of[self.idx]] = now
        else:
            fleet.failures[f"closed {code} before welcome" if code else "no handshake"] += 1
        self._schedule(code)

    def _failed(self, why: str) -> None:
        self.fleet.failures[why] += 1
        self._schedule(0)

    def _schedule(self, code: int) -> None:
        """The recipe's wait before the next attempt."""
        fleet = self.fleet
        if fleet.stopping:
            return
        if code in BACK_OFF:
            base = min(10.0, 2.0 * 2**self.backoff)
            self.backoff += 1
            delay = base * fleet.rng.uniform(1.0, 1.5)
        else:
            delay = fleet.rng.uniform(0.0, 1.0)
        self.timer = fleet.loop.call_later(delay, self.connect)


class Fleet:
    """The clients of one process, what they observed, and the pods they may pick."""

    def __init__(self, source: str | None, seed: int, welcome_timeout: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.source = source
        #: No welcome within this: the client gives up on the attempt and tries again.
        self.welcome_timeout = welcome_timeout
        self.rng = random.Random(seed)
        self.live: list[Addr] = []
        self.clients: dict[int, Client] = {}
        self.stopping = False
        self.wsstats = Stats()
        self.codes: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self.not_recovered: Counter[str] = Counter()
        self.welcomes = 0
        self.welcomes_since = 0
        self.missed = 0
        self.duplicates = 0
        self.longest_gap = 0.0
        # Every receipt, duplicates included: (user index, message id, time).
        self.rec_idx = array("i")
        self.rec_id: list[str] = []
        self.rec_t = array("d")
        # Every welcome: when, attempt start -> welcome, attempt start -> 101 (the rest
        # is the pod's: the binding, the replay), and (reconnects) close -> welcome.
        self.welcome_t = array("d")
        self.attempt_s = array("d")
        self.upgrade_s = array("d")
        self.gap_s = array("d")
        # Every welcomed connection: user, pod port, welcome and close time (0: open).
        self.conn_idx = array("i")
        self.conn_port = array("i")
        self.conn_open = array("d")
        self.conn_close = array("d")
        self.conn_of: dict[int, int] = {}  # user index -> its current connection's row

    def on_welcome(self, client: Client, frame: dict[str, Any], now: float) -> None:
        self.welcomes += 1
        self.welcome_t.append(now)
        self.attempt_s.append(now - client.attempt_t)
        assert client.conn is not None
        self.upgrade_s.append(client.conn.upgraded_at - client.attempt_t)
        if client.down_since:
            gap = now - client.down_since
            self.gap_s.append(gap)
            self.longest_gap = max(self.longest_gap, gap)
        if client.since_sent:
            self.welcomes_since += 1
            self.missed += int(frame.get("missed") or 0)
            if frame.get("recovered") is False:
                self.not_recovered[str(frame.get("reason"))] += 1
        self.conn_of[client.idx] = len(self.conn_idx)
        self.conn_idx.append(client.idx)
        self.conn_port.append(client.conn.port)
        self.conn_open.append(now)
        self.conn_close.append(0.0)

    def connected(self) -> int:
        return sum(1 for c in self.clients.values() if c.welcomed)

    def back_within(self, events: list[tuple[int, float]]) -> list[dict[str, Any]]:
        """For each (pod port, SIGTERM/SIGKILL time): the clients on that pod then, and the
        longest time from the event to such a client's next welcome (``inf``: none came)."""
        rows: dict[int, list[int]] = {}
        for row, idx in enumerate(self.conn_idx):
            rows.setdefault(idx, []).append(row)
        out = []
        for port, t in events:
            affected = 0
            worst = 0.0
            for conns in rows.values():
                for k, row in enumerate(conns):
                    close = self.conn_close[row]
                    if self.conn_port[row] != port or self.conn_open[row] > t:
                        continue
                    if 0 < close < t:
                        continue
                    affected += 1
                    nxt = conns[k + 1] if k + 1 < len(conns) else None
                    worst = max(worst, math.inf if nxt is None else self.conn_open[nxt] - t)
            out.append({"affected": affected, "back_max_s": worst})
        return out


class DeployWorker(Worker):
    """A load-generator process: recovering clients, or the publisher."""

    def __init__(self, conn: Connection) -> None:
        super().__init__(conn)
        self.fleet: Fleet | None = None
        self.publisher: LivePublisher | None = None

    def _on_command(self) -> None:
        # A command may outgrow the pipe's buffer; read it whole (dd38549, the other way).
        fd = self.conn.fileno()
        os.set_blocking(fd, True)
        try:
            super()._on_command()
        finally:
            os.set_blocking(fd, False)

    async def cmd_open(
        self,
        users: list[int],
        targets: list[Addr],
        source: str | None,
        seed: int,
        welcome_timeout: float,
        concurrency: int = 100,
        timeout: float = 120.0,
    ) -> dict[str, Any]:
        """Open one client per user index, user i first to ``targets[i % len]``; wait for
        their welcomes, ``concurrency`` handshakes at a time."""
        fleet = self.fleet = Fleet(source, seed, welcome_timeout)
        fleet.live = list(targets)
        sem = asyncio.Semaphore(concurrency)
        started = time.time()

        async def one(i: int) -> None:
            client = fleet.clients[i] = Client(fleet, i)
            async with sem:
                client.connect(targets[i % len(targets)])
                deadline = time.monotonic() + timeout
                while not client.welcomed and time.monotonic() < deadline:
                    await asyncio.sleep(0.02)

        await asyncio.gather(*(one(i) for i in users))
        last = max(fleet.welcome_t) if len(fleet.welcome_t) else started
        return {"ok": fleet.connected(), "started": started, "last_ready": last}

    async def cmd_live(self, addrs: list[Addr]) -> None:
        if self.fleet is not None:
            self.fleet.live = list(addrs)
        if self.publisher is not None:
            self.publisher.live = list(addrs)

    async def cmd_progress(self) -> dict[str, Any]:
        f = self.fleet
        assert f is not None
        return {
            "clients": len(f.clients),
            "connected": f.connected(),
            "welcomes": f.welcomes,
            "receipts": len(f.rec_id),
            "unique": sum(len(c.seen) for c in f.clients.values()),
            "duplicates": f.duplicates,
            "codes": dict(f.codes),
            "failures": dict(f.failures),
            "not_recovered": dict(f.not_recovered),
            "welcomes_since": f.welcomes_since,
            "missed": f.missed,
            "longest_gap": f.longest_gap,
        }

    async def cmd_got(self, mid: str, since: float) -> array[float]:
        """Receive time minus ``since`` at each client that has message ``mid``."""
        f = self.fleet
        assert f is not None
        out = array("d")
        for k, m in enumerate(f.rec_id):
            if m == mid:
                out.append(f.rec_t[k] - since)
        return out

    async def cmd_take(self, what: str, start: int, count: int) -> Any:
        """A slice of one record: ``receipts`` (tuples), or an array by name."""
        f = self.fleet
        if what == "published":
            assert self.publisher is not None
            return self.publisher.accepted[start : start + count]
        assert f is not None
        if what == "receipts":
            end = start + count
            return list(
                zip(f.rec_idx[start:end], f.rec_id[start:end], f.rec_t[start:end], strict=True)
            )
        return getattr(f, what)[start : start + count]

    async def cmd_back_within(self, events: list[tuple[int, float]]) -> list[dict[str, Any]]:
        assert self.fleet is not None
        return self.fleet.back_within(events)

    async def cmd_publish(
        self, users: int, rate: float, live: list[Addr], pad: int, inflight: int
    ) -> None:
        self.publisher = LivePublisher(users, rate, live, pad, inflight)
        self.publisher.start()

    async def cmd_publish_stop(self) -> dict[str, Any]:
        p = self.publisher
        assert p is not None
        await p.stop()
        return {
            "sent": p.sent,
            "accepted": len(p.accepted),
            "statuses": p.statuses,
            "failures": p.failures,
            "first": p.first,
            "last": p.last,
        }

    async def cmd_quit(self) -> None:
        f = self.fleet
        if f is not None:
            f.stopping = True
            for c in f.clients.values():
                if c.timer is not None:
                    c.timer.cancel()
                if c.conn is not None:
                    c.conn.close()
        with contextlib.suppress(Exception):
            await super().cmd_quit()


def _main(conn: Connection) -> None:
    raise_nofile()
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()

    async def go() -> None:
        await DeployWorker(conn).run()

    asyncio.run(go())


class DeployLoad(LoadGen):
    """The parent's handle on ``DeployWorker`` processes (clients, or the publisher)."""

    def __init__(self, processes: int) -> None:
        super().__init__(processes, _main)

    def one(self, k: int, cmd: str, **kw: Any) -> Any:
        """Send one command to process ``k`` and return its reply."""
        self.pipes[k].send((cmd, kw))
        status, value = self.pipes[k].recv()
        if status != "ok":
            raise RuntimeError(f"load generator {k} {cmd} failed: {value}")
        return value

    def take(self, k: int, what: str, chunk: int = 20_000) -> list[Any]:
        """All of one record of process ``k``, slice by slice."""
        out: list[Any] = []
        while True:
            part = self.one(k, "take", what=what, start=len(out), count=chunk)
            out.extend(part)
            if len(part) < chunk:
                return out
