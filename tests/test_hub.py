"""The hub's fan-out never waits for a client; a slow one is cut off and counted.

The writer is driven through a fake of the transport seam (transport.py); that
the real uvicorn fast path is engaged is tested against a real server in
test_fast_path.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

from clarion import disconnects
from clarion.broker import MemoryBroker, MemoryExchange
from clarion.frames import Outgoing, control, text_frame
from clarion.hub import Connection, ConnectionState, Hub
from clarion.message import Envelope, Target
from clarion.metrics import Metrics
from clarion.writer import SocketWriter


class FakeTransport:
    """The transport seam: sends complete at once while the gate is open, else they wait."""

    def __init__(self, *, frames: bool = False, stalled: bool = False) -> None:
        self.texts: list[str] = []
        self.writes: list[bytes] = []
        self.closes: list[tuple[int, str]] = []
        self.frames = frames
        self.gate = asyncio.Event()
        if not stalled:
            self.gate.set()

    def can_write_frames(self) -> bool:
        return self.frames and self.gate.is_set()

    def frame_bytes(self, outs: list[Outgoing]) -> bytes:
        return b"".join([out.frame or b"" for out in outs])

    def write_frames(self, data: bytes, count: int) -> None:
        self.writes.append(data)

    def send_now(self, out: Outgoing) -> Any:
        if self.gate.is_set():
            self.texts.append(out.text)
            return None
        return self.send(out)

    async def send(self, out: Outgoing) -> None:
        await self.gate.wait()
        self.texts.append(out.text)

    async def close(self, code: int, reason: str) -> None:
        self.closes.append((code, reason))

    def abort(self) -> None:
        self.aborted = True


def connection(
    conn_id: str, user: str, transport: FakeTransport, metrics: Metrics, **limits: int
) -> Connection:
    return Connection(conn_id, user, SocketWriter(transport, metrics, **limits))


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels or None)
    return value or 0.0


async def test_slow_client_is_closed_1013_and_others_keep_receiving() -> None:
    metrics = Metrics()
    hub = Hub(metrics, "p")
    slow_t, fast_t = FakeTransport(stalled=True), FakeTransport()
    slow = connection("c1", "u", slow_t, metrics, max_messages=5)
    fast = connection("c2", "u", fast_t, metrics, max_messages=5)
    for c in (slow, fast):
        hub.add(c)

    for i in range(20):
        hub.deliver(Envelope.create(Target("broadcast"), i))
        await asyncio.sleep(0)  # let writers run, as the event loop would
    await wait_until(lambda: slow_t.closes)
    assert slow.state is ConnectionState.CLOSED and slow.disconnect is disconnects.SLOW_CLIENT
    assert slow_t.closes == [(1013, disconnects.SLOW_CLIENT.reason)]
    assert len(fast_t.texts) == 20
    assert sample(metrics, "clarion_messages_dropped_total", reason="slow_client") >= 1
    assert sample(metrics, "clarion_connections_closed_total", reason="slow_client") == 1
    assert slow.id not in hub.connections  # it stops counting at once
    await slow.stop()
    await fast.stop()


async def test_byte_bound_also_cuts_off() -> None:
    metrics = Metrics()
    conn = connection("c", "u", FakeTransport(stalled=True), metrics, max_bytes=100)

    assert conn.send(control("x" * 60))
    await asyncio.sleep(0)
    assert conn.send(control("y" * 60))  # the first is in flight, this one is buffered
    assert not conn.send(control("z" * 60))  # 120 bytes buffered > 100
    assert conn.closing
    await conn.stop()


async def test_deliver_targets_only_matching_sockets() -> None:
    metrics = Metrics()
    hub = Hub(metrics, "p")
    ts = {name: FakeTransport() for name in ("u1a", "u1b", "u2")}
    conns = {
        "u1a": connection("1", "u1", ts["u1a"], metrics),
        "u1b": connection("2", "u1", ts["u1b"], metrics),
        "u2": connection("3", "u2", ts["u2"], metrics),
    }
    for c in conns.values():
        hub.add(c)

    hub.subscribe(conns["u2"], "news")
    assert hub.deliver(Envelope.create(Target("user", "u1"), "a")) == 2
    assert hub.deliver(Envelope.create(Target("channel", "news"), "b")) == 1
    assert hub.deliver(Envelope.create(Target("channel", "nobody"), "c")) == 0
    await asyncio.sleep(0.01)
    assert [len(t.texts) for t in ts.values()] == [1, 1, 1]
    hub.remove(conns["u2"])
    assert sample(metrics, "clarion_subscriptions") == 0
    for c in conns.values():
        await c.stop()


class Collect:
    """A broker listener that keeps what it is given."""

    def __init__(self) -> None:
        self.got: list[Envelope] = []

    def on_message(self, env: Envelope, caught_up: bool = False) -> object:
        self.got.append(env)
        return None

    def on_state(self, up: bool) -> None:
        pass

    def on_gap(self) -> None:
        pass


async def test_memory_broker_replay_since() -> None:
    from clarion.replays import UNKNOWN, Replays

    exchange = MemoryExchange()
    listener = Collect()
    broker = MemoryBroker(exchange, "p")
    await broker.start(listener)
    envs = [Envelope.create(Target("user", "u" if i % 2 else "v"), i) for i in range(6)]
    await broker.publish(envs)
    assert len(listener.got) == 6
    replays = Replays(broker.read_stream, broker.history_start)
    replay = await replays.replay(envs[1].id, Target("user", "u"))
    assert replay.complete
    assert [e.id for e in replay.messages] == [envs[3].id, envs[5].id]
    # Older than any message, but the history has dropped nothing: no such message.
    unknown = await replays.replay("01a00000-0000-7000-8000-00000000beef", Target("user", "u"))
    assert not unknown.complete and unknown.reason == UNKNOWN


async def test_a_redelivered_message_is_not_pushed_twice() -> None:
    metrics = Metrics()
    hub = Hub(metrics, "p")
    t = FakeTransport()
    conn = connection("1", "u", t, metrics)
    hub.add(conn)

    env = Envelope.create(Target("user", "u"), "once")
    assert hub.deliver(env) == 1
    assert hub.deliver(env) == 0  # the broker delivered it again
    assert hub.deliver(Envelope.create(Target("user", "u"), "another")) == 1
    await asyncio.sleep(0.01)
    assert len(t.texts) == 2
    assert sample(metrics, "clarion_messages_dropped_total", reason="duplicate") == 1
    await conn.stop()


async def test_a_send_that_waits_hands_over_to_a_writer_and_keeps_order() -> None:
    metrics = Metrics()
    hub = Hub(metrics, "p")
    t = FakeTransport()
    conn = connection("c", "u", t, metrics, max_messages=100)
    hub.add(conn)
    envs = [Envelope.create(Target("user", "u"), i) for i in range(7)]
    assert hub.deliver(envs[0]) == 1  # writable: sent at once, no task
    assert t.texts == [envs[0].body.decode()] and conn.writer.backlog == 0
    t.gate.clear()  # the client stops reading
    for env in envs[1:6]:
        assert hub.deliver(env) == 1
    await asyncio.sleep(0.01)
    assert len(t.texts) == 1 and conn.writer.backlog == 4  # one in flight, four waiting
    t.gate.set()  # the client catches up
    await wait_until(lambda: len(t.texts) == 6)
    assert t.texts == [e.body.decode() for e in envs[:6]]
    await wait_until(lambda: conn.writer._task is None)  # back to sending without a task
    assert hub.deliver(envs[6]) == 1 and t.texts[-1] == envs[6].body.decode()
    assert sample(metrics, "clarion_messages_delivered_total") == 7
    await conn.stop()


async def wait_until(pred: Any, timeout: float = 2.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


def test_prebuilt_text_frame_matches_the_websockets_library() -> None:
    from websockets.frames import Frame, Opcode

    for size in (0, 1, 125, 126, 65535, 65536, 200_000):
        payload = ("é" * size).encode()[:size]
        assert text_frame(payload) == Frame(Opcode.TEXT, payload).serialize(
            mask=False, extensions=[]
        )


async def test_fast_path_joins_one_iterations_frames_into_one_write_per_socket() -> None:
    metrics = Metrics()
    hub = Hub(metrics, "p")
    ts = [FakeTransport(frames=True), FakeTransport(frames=True)]
    conns = [connection(str(i), "u", t, metrics) for i, t in enumerate(ts)]
    for c in conns:
        hub.add(c)
    envs = [Envelope.create(Target("broadcast"), i) for i in range(3)]
    for env in envs:
        assert hub.deliver(env) == 2
    assert ts[0].writes == []  # gathered until the end of this loop iteration
    await asyncio.sleep(0)
    expected = b"".join(text_frame(e.body) for e in envs)
    assert [t.writes for t in ts] == [[expected], [expected]]
    assert sample(metrics, "clarion_messages_delivered_total") == 6


async def test_latency_is_observed_once_per_message_and_pod_after_the_writes() -> None:
    metrics = Metrics()
    hub = Hub(metrics, "p")
    ts = [FakeTransport(frames=True) for _ in range(3)]
    for i, t in enumerate(ts):
        hub.add(connection(str(i), "u", t, metrics))
    written_first: list[bool] = []
    histogram = metrics.latency
    observe = histogram.observe

    def spy(value: float) -> None:
        written_first.append(all(t.writes for t in ts))
        observe(value)

    histogram.observe = spy  # type: ignore[method-assign]
    for i in range(2):
        assert hub.deliver(Envelope.create(Target("broadcast"), i)) == 3
    # Nothing is written (nor observed) before the end of this loop iteration.
    assert sample(metrics, "clarion_delivery_latency_seconds_count") == 0
    await wait_until(lambda: sample(metrics, "clarion_delivery_latency_seconds_count") == 2)
    assert written_first == [True, True]  # observed once per message, after every socket's write
    assert sample(metrics, "clarion_messages_delivered_total") == 6  # per socket, as before
    await asyncio.sleep(0.01)
    assert sample(metrics, "clarion_delivery_latency_seconds_count") == 2


async def test_a_frame_sent_the_ordinary_way_waits_for_gathered_frames() -> None:
    metrics = Metrics()
    hub = Hub(metrics, "p")
    t = FakeTransport(frames=True)
    conn = connection("1", "u", t, metrics)
    hub.add(conn)
    env = Envelope.create(Target("user", "u"), "first")
    hub.deliver(env)
    conn.send(control('{"type":"pong"}'))  # e.g. a reply to the client's ping
    assert t.writes == [text_frame(env.body)]  # flushed before the pong went out
    assert t.texts == ['{"type":"pong"}']


async def test_live_messages_wait_behind_a_replay_and_are_not_sent_twice() -> None:
    from clarion.session import replay_frames

    metrics = Metrics()
    hub = Hub(metrics, "p")
    t = FakeTransport()
    conn = connection("1", "u", t, metrics)
    hub.add(conn)
    old, both, live = (Envelope.create(Target("user", "u"), i) for i in range(3))
    conn.hold()
    assert conn.state is ConnectionState.RECOVERING
    hub.deliver(both)
    hub.deliver(live)
    assert t.texts == []  # held while the replay is read
    conn.release(replay_frames([old, both]))
    assert conn.state is ConnectionState.LIVE
    assert t.texts == [e.body.decode() for e in (old, both, live)]


async def test_a_replayed_message_that_arrives_live_after_the_replay_is_not_sent_twice() -> None:
    # The replay's read can end before the pod's queue delivers the same message
    # (routed delivery binds before the read): its live copy is dropped.
    from clarion.session import replay_frames

    metrics = Metrics()
    hub = Hub(metrics, "p")
    t = FakeTransport()
    conn = connection("1", "u", t, metrics)
    hub.add(conn)
    a, b = (Envelope.create(Target("user", "u"), i) for i in range(2))
    conn.hold()
    conn.release(replay_frames([a, b]))
    hub.deliver(b)  # late live copies
    hub.deliver(a)
    later = Envelope.create(Target("user", "u"), "later")
    hub.deliver(later)
    assert t.texts == [e.body.decode() for e in (a, b, later)]
    # Once every replayed id came by (or newer messages did), nothing is remembered.
    assert conn._replayed is None


def test_every_disconnect_label_exists_at_zero() -> None:
    metrics = Metrics()
    for d in disconnects.ALL:
        assert (
            metrics.registry.get_sample_value(
                "clarion_connections_closed_total", {"reason": d.label}
            )
            == 0
        ), d
