"""The hub's fan-out never waits for a client; a slow one is cut off and counted."""

from __future__ import annotations

import asyncio
from typing import Any

from clarion.broker import MemoryBroker, MemoryExchange
from clarion.hub import CLOSE_TRY_AGAIN, Connection, Hub
from clarion.metrics import Metrics
from clarion.protocol import Envelope, Target


class FakeSocket:
    """An ASGI send that records frames; ``stalled`` makes every send hang."""

    def __init__(self, stalled: bool = False) -> None:
        self.sent: list[dict[str, Any]] = []
        self.stalled = stalled

    async def __call__(self, message: dict[str, Any]) -> None:
        if self.stalled and message["type"] == "websocket.send":
            await asyncio.Event().wait()
        self.sent.append(message)


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels or None)
    return value or 0.0


async def test_slow_client_is_closed_1013_and_others_keep_receiving() -> None:
    metrics = Metrics()
    hub = Hub(metrics, "p")
    slow_sock, fast_sock = FakeSocket(stalled=True), FakeSocket()
    slow = Connection("c1", "u", slow_sock, metrics, max_buffer_messages=5)
    fast = Connection("c2", "u", fast_sock, metrics, max_buffer_messages=5)
    for c in (slow, fast):
        hub.add(c)

    for i in range(20):
        hub.deliver(Envelope.create(Target("broadcast"), i))
        await asyncio.sleep(0)  # let writers run, as the event loop would
    await asyncio.sleep(0.01)
    assert slow.closing and slow.close_code == CLOSE_TRY_AGAIN
    closes = [m for m in slow_sock.sent if m["type"] == "websocket.close"]
    assert closes and closes[0]["code"] == 1013
    assert len([m for m in fast_sock.sent if m["type"] == "websocket.send"]) == 20
    assert sample(metrics, "clarion_messages_dropped_total", reason="slow_client") >= 1
    await slow.stop()
    await fast.stop()


async def test_byte_bound_also_cuts_off() -> None:
    metrics = Metrics()
    conn = Connection("c", "u", FakeSocket(stalled=True), metrics, max_buffer_bytes=100)

    assert conn.push("x" * 60, 60)
    await asyncio.sleep(0)
    assert conn.push("y" * 60, 60)  # the first is in flight, this one is buffered
    assert not conn.push("z" * 60, 60)  # 120 bytes buffered > 100
    assert conn.closing
    await conn.stop()


async def test_deliver_targets_only_matching_sockets() -> None:
    metrics = Metrics()
    hub = Hub(metrics, "p")
    socks = {name: FakeSocket() for name in ("u1a", "u1b", "u2")}
    conns = {
        "u1a": Connection("1", "u1", socks["u1a"], metrics),
        "u1b": Connection("2", "u1", socks["u1b"], metrics),
        "u2": Connection("3", "u2", socks["u2"], metrics),
    }
    for c in conns.values():
        hub.add(c)

    hub.subscribe(conns["u2"], "news")
    assert hub.deliver(Envelope.create(Target("user", "u1"), "a")) == 2
    assert hub.deliver(Envelope.create(Target("channel", "news"), "b")) == 1
    assert hub.deliver(Envelope.create(Target("channel", "nobody"), "c")) == 0
    await asyncio.sleep(0.01)
    assert [len(s.sent) for s in socks.values()] == [1, 1, 1]
    hub.remove(conns["u2"], "client")
    assert sample(metrics, "clarion_subscriptions") == 0
    for c in conns.values():
        await c.stop()


async def test_memory_broker_replay_since() -> None:
    exchange = MemoryExchange()
    got: list[Envelope] = []
    broker = MemoryBroker(exchange, "p")
    await broker.start(got.append)
    envs = [Envelope.create(Target("user", "u" if i % 2 else "v"), i) for i in range(6)]
    await broker.publish(envs)
    assert len(got) == 6
    replay = await broker.replay(envs[1].id, lambda e: e.target.name == "u")
    assert replay.complete
    assert [e.id for e in replay.messages] == [envs[3].id, envs[5].id]
    unknown = await broker.replay("01a00000-0000-7000-8000-000000000000", lambda e: True)
    assert not unknown.complete


async def test_a_redelivered_message_is_not_pushed_twice() -> None:
    import dataclasses

    metrics = Metrics()
    hub = Hub(metrics, "p")
    sock = FakeSocket()
    conn = Connection("1", "u", sock, metrics)
    hub.add(conn)

    env = Envelope.create(Target("user", "u"), "once")
    assert hub.deliver(env) == 1
    assert hub.deliver(dataclasses.replace(env, redelivered=True)) == 0
    other = Envelope.create(Target("user", "u"), "first time, but redelivered")
    assert hub.deliver(dataclasses.replace(other, redelivered=True)) == 1
    await asyncio.sleep(0.01)
    assert len(sock.sent) == 2
    assert sample(metrics, "clarion_messages_dropped_total", reason="duplicate") == 1
    await conn.stop()


class GatedSocket:
    """A send that waits while the gate is closed, like a transport paused by a slow reader."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.gate.set()
        self.texts: list[str] = []

    async def __call__(self, message: dict[str, Any]) -> None:
        await self.gate.wait()
        if message["type"] == "websocket.send":
            self.texts.append(message["text"])


async def test_a_send_that_waits_hands_over_to_a_writer_and_keeps_order() -> None:
    metrics = Metrics()
    sock = GatedSocket()
    conn = Connection("c", "u", sock, metrics, max_buffer_messages=100)
    assert conn.push("0", 1, 1)  # writable: sent at once, no task
    assert sock.texts == ["0"] and conn._writer is None
    sock.gate.clear()  # the client stops reading
    for i in range(1, 6):
        assert conn.push(str(i), 1, 1)
    assert conn._writer is not None  # the first waiting send started a writer
    await asyncio.sleep(0.01)
    assert sock.texts == ["0"]
    sock.gate.set()  # the client catches up
    await wait_until(lambda: sock.texts == ["0", "1", "2", "3", "4", "5"])
    await wait_until(lambda: conn._writer is None)  # back to sending without a task
    assert conn.push("6", 1, 1) and sock.texts[-1] == "6"
    assert sample(metrics, "clarion_messages_delivered_total") == 7


async def wait_until(pred: Any, timeout: float = 2.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


def test_prebuilt_text_frame_matches_the_websockets_library() -> None:
    from websockets.frames import Frame, Opcode

    from clarion.hub import text_frame

    for size in (0, 1, 125, 126, 65535, 65536, 200_000):
        payload = ("é" * size).encode()[:size]
        assert text_frame(payload) == Frame(Opcode.TEXT, payload).serialize(
            mask=False, extensions=[]
        )


class FakeRaw:
    """Stands in for uvicorn's sans-I/O protocol: what the fast path looks at."""

    def __init__(self) -> None:
        from websockets.protocol import State

        self.writes: list[bytes] = []
        self.transport = self
        self.writable = asyncio.Event()
        self.writable.set()
        self.close_sent = False
        self.disconnected = False
        self.handshake_complete = True
        self.conn = type("Conn", (), {"state": State.OPEN})()

    def write(self, data: bytes) -> None:
        self.writes.append(data)


async def test_fast_path_joins_one_iterations_frames_into_one_write_per_socket() -> None:
    from clarion.hub import text_frame

    metrics = Metrics()
    hub = Hub(metrics, "p")
    raws = [FakeRaw(), FakeRaw()]
    conns = [Connection(str(i), "u", FakeSocket(), metrics, raw=raw) for i, raw in enumerate(raws)]
    for c in conns:
        hub.add(c)
    envs = [Envelope.create(Target("broadcast"), i) for i in range(3)]
    for env in envs:
        assert hub.deliver(env) == 2
    assert raws[0].writes == []  # gathered until the end of this loop iteration
    await asyncio.sleep(0)
    expected = b"".join(text_frame(e.body) for e in envs)
    assert [r.writes for r in raws] == [[expected], [expected]]
    assert sample(metrics, "clarion_messages_delivered_total") == 6


async def test_a_frame_sent_the_ordinary_way_waits_for_gathered_frames() -> None:
    from clarion.hub import text_frame

    metrics = Metrics()
    hub = Hub(metrics, "p")
    raw, sock = FakeRaw(), FakeSocket()
    conn = Connection("1", "u", sock, metrics, raw=raw)
    hub.add(conn)
    env = Envelope.create(Target("user", "u"), "first")
    hub.deliver(env)
    conn.push('{"type":"pong"}', 0)  # e.g. a reply to the client's ping
    assert raw.writes == [text_frame(env.body)]  # flushed before the pong went out
    assert [m["text"] for m in sock.sent] == ['{"type":"pong"}']
