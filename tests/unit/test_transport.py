"""transport.py: the WebSocket seam under a socket's writer, on a real uvicorn server with a
real WebSocket client reading what reaches the wire.

What a newcomer changing it must keep: which transport a server gets, that pre-built
frames go out whole and in order, that a send completes without a task while the socket
is writable and through an awaitable when it is not, how a close and an abort look to the
client, and the answer to a handshake the server cannot parse.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn
import websockets
from uvicorn.server import ServerState
from websockets.asyncio.client import ClientConnection, connect

from clarion.frames import control, text_frame
from clarion.transport import (
    AsgiTransport,
    KeptFlagTransport,
    UvicornTransport,
    WriteCounts,
    frames_ok_now,
    step,
    transport_for,
    websocket_protocol,
)

from .servers import Connection, Server, serving

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    async with serving() as s:
        yield s


async def open_socket(server: Server, **kwargs: Any) -> tuple[ClientConnection, Connection]:
    client = await connect(server.ws_url, open_timeout=10, **kwargs)
    return client, await server.app.next()


async def recv(client: ClientConnection, n: int) -> list[str]:
    return [str(await asyncio.wait_for(client.recv(), 10)) for _ in range(n)]


async def test_uvicorn_gets_the_fast_transport_and_it_can_write_frames(server: Server) -> None:
    client, conn = await open_socket(server)
    async with client:
        t = transport_for(conn.send, WriteCounts())
        assert isinstance(t, UvicornTransport)
        assert t.can_write_frames()


def agrees(t: Any, proto: Any) -> bool:
    """What the fan-out reads (the kept flag) is what the protocol's state says now."""
    kept = t.can_write_frames()
    assert kept is frames_ok_now(proto), (kept, frames_ok_now(proto))
    return bool(kept)


async def test_the_kept_flag_follows_pause_resume_and_a_server_close(server: Server) -> None:
    client, conn = await open_socket(server)
    t = transport_for(conn.send, WriteCounts())
    proto = conn.send.__self__  # type: ignore[attr-defined]
    assert isinstance(t, KeptFlagTransport) and proto.frames_sink is t
    assert agrees(t, proto)
    proto.pause_writing()  # as the asyncio transport calls them
    assert not agrees(t, proto)
    proto.resume_writing()
    assert agrees(t, proto)
    await t.close(4000, "bye")
    assert not agrees(t, proto)
    await client.close()
    async with asyncio.timeout(10):
        while proto.frames_sink is not None:  # let go on connection_lost
            await asyncio.sleep(0.01)
    assert not t.can_write_frames()


@pytest.mark.parametrize("how", ["client close", "connection lost", "shutdown", "keepalive"])
async def test_the_kept_flag_is_cleared_when_the_socket_stops_taking_frames(
    server: Server, how: str
) -> None:
    client, conn = await open_socket(server)
    t = transport_for(conn.send, WriteCounts())
    proto = conn.send.__self__  # type: ignore[attr-defined]
    assert agrees(t, proto)
    if how == "client close":
        await client.close()
    elif how == "connection lost":
        client.transport.abort()
    elif how == "shutdown":
        proto.shutdown()  # uvicorn stopping: a 1012 close frame
    else:
        proto.keepalive_timeout()  # no pong in time: a 1011 close frame
    async with asyncio.timeout(10):
        while frames_ok_now(proto):
            await asyncio.sleep(0.01)
    assert not agrees(t, proto)
    await client.close()


class _Transport:
    """An asyncio transport that keeps what is written and never loses the connection."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


async def test_a_close_frame_from_the_client_clears_the_kept_flag_before_the_connection_ends() -> (
    None
):
    # Between the client's close frame and connection_lost only websockets' state says the
    # socket takes no more frames (uvicorn sets no flag of its own for it).
    sends: asyncio.Queue[Any] = asyncio.Queue()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        sends.put_nowait(send)
        await receive()

    config = uvicorn.Config(app, ws=websocket_protocol(), lifespan="off", log_level="warning")
    config.load()
    proto = websocket_protocol()(config=config, server_state=ServerState(), app_state={})  # type: ignore[operator]
    wire = _Transport()
    proto.connection_made(wire)
    proto.data_received(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    send = await asyncio.wait_for(sends.get(), 10)
    t = transport_for(send, WriteCounts())
    assert agrees(t, proto)
    # A masked close frame, code 1000, as a client sends it.
    mask = b"\x01\x02\x03\x04"
    payload = bytes(b ^ mask[i % 4] for i, b in enumerate(b"\x03\xe8"))
    proto.data_received(b"\x88\x82" + mask + payload)
    assert wire.closing and not proto.disconnected and not proto.close_sent
    assert not agrees(t, proto)
    proto.connection_lost(None)
    assert not agrees(t, proto) and proto.frames_sink is None
    await asyncio.sleep(0)


async def test_prebuilt_frames_arrive_whole_and_in_order(server: Server) -> None:
    client, conn = await open_socket(server)
    async with client:
        counts = WriteCounts()
        t = transport_for(conn.send, counts)
        # Lengths on both sides of the 7-bit and 16-bit length encodings.
        texts = ["a", "b" * 125, "c" * 126, "d" * 65535, "e" * 65536]
        t.write_frames(b"".join(text_frame(x.encode()) for x in texts), len(texts))
        assert await recv(client, len(texts)) == texts
        assert (counts.frame, counts.direct, counts.asgi) == (len(texts), 0, 0)


async def test_with_compression_no_prebuilt_frames_but_sends_still_go_out() -> None:
    async with serving(ws_per_message_deflate=True) as server:
        client, conn = await open_socket(server, compression="deflate")
        async with client:
            t = transport_for(conn.send, WriteCounts(), raw_frames=False)
            assert not t.can_write_frames()
            assert t.send_now(control("z" * 1000)) is None
            assert await recv(client, 1) == ["z" * 1000]


async def test_a_send_on_a_writable_socket_completes_without_a_task(server: Server) -> None:
    client, conn = await open_socket(server)
    async with client:
        counts = WriteCounts()
        t = transport_for(conn.send, counts)
        assert t.send_now(control("one")) is None
        await t.send(control("two"))
        assert await recv(client, 2) == ["one", "two"]
        assert (counts.frame, counts.direct, counts.asgi) == (0, 1, 1)


async def test_a_close_reaches_the_client_with_its_code_and_reason(server: Server) -> None:
    client, conn = await open_socket(server)
    counts = WriteCounts()
    t = transport_for(conn.send, counts)
    await t.close(4000, "going away now")
    assert not t.can_write_frames()
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await asyncio.wait_for(client.recv(), 10)
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4000, "going away now")
    await client.close()


async def test_a_send_after_the_client_left_raises(server: Server) -> None:
    client, conn = await open_socket(server)
    await client.close()
    async with asyncio.timeout(10):
        while not any(m["type"] == "websocket.disconnect" for m in conn.received):
            await asyncio.sleep(0.01)
    t = transport_for(conn.send, WriteCounts())
    assert not t.can_write_frames()
    assert conn.send.__self__.frames_sink is None  # type: ignore[attr-defined]  # no cycle
    with pytest.raises(Exception):  # noqa: B017 - whichever the server raises: not silence
        result = t.send_now(control("late"))
        if result is not None:
            await result


async def test_an_abort_drops_the_connection_without_a_close_frame(server: Server) -> None:
    client, conn = await open_socket(server)
    t = transport_for(conn.send, WriteCounts())
    t.abort()
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await asyncio.wait_for(client.recv(), 10)
    assert closed.value.rcvd is None  # no close frame: a reset, as a dead pod looks


async def test_a_socket_whose_client_stopped_reading_stops_taking_frames_until_it_reads(
    server: Server,
) -> None:
    # The client reads nothing while one message waits (max_queue=1).
    client, conn = await open_socket(server, max_queue=1, max_size=None)
    async with client:
        counts = WriteCounts()
        t = transport_for(conn.send, counts)
        big = "x" * (1 << 20)
        frame = text_frame(big.encode())
        written = 0
        deadline = time.monotonic() + 15
        while t.can_write_frames():
            assert time.monotonic() < deadline, "the transport never paused"
            t.write_frames(frame, 1)
            written += 1
            await asyncio.sleep(0.01)  # let the bytes move and the client fill up
        # Paused: a send cannot complete at once, so it hands back what finishes it.
        pending = t.send_now(control("after"))
        assert pending is not None
        assert counts.direct == 0
        got = await recv(client, written)  # the client reads again
        assert got == [big] * written
        await asyncio.wait_for(pending, 10)
        assert await recv(client, 1) == ["after"]
        assert counts.asgi == 1 and t.can_write_frames()


async def test_a_plain_asgi_send_gets_the_awaited_transport() -> None:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        await asyncio.sleep(0)
        sent.append(message)

    counts = WriteCounts()
    t = transport_for(send, counts)
    assert type(t) is AsgiTransport
    assert not t.can_write_frames()
    pending = t.send_now(control("hi"))
    assert pending is not None
    await pending
    await t.close(1001, "drain")
    t.abort()  # plain ASGI cannot reset: nothing happens
    assert sent == [
        {"type": "websocket.send", "text": "hi"},
        {"type": "websocket.close", "code": 1001, "reason": "drain"},
    ]
    assert counts.asgi == 1


async def test_step_runs_a_send_that_never_suspends_in_place() -> None:
    ran: list[str] = []

    async def at_once() -> None:
        ran.append("sent")

    counts = WriteCounts()
    assert step(at_once(), counts) is None
    assert ran == ["sent"] and (counts.direct, counts.asgi) == (1, 0)


async def test_step_finishes_a_suspended_send_in_order_and_counts_it_once() -> None:
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    ran: list[str] = []

    async def waits() -> None:
        ran.append("start")
        await gate
        await asyncio.sleep(0)  # a bare yield too
        ran.append("end")

    counts = WriteCounts()
    pending = step(waits(), counts)
    assert pending is not None and ran == ["start"]
    task = asyncio.ensure_future(pending)
    await asyncio.sleep(0.01)
    assert not task.done()
    gate.set_result(None)
    await asyncio.wait_for(task, 5)
    assert ran == ["start", "end"] and (counts.direct, counts.asgi) == (0, 1)


async def test_step_hands_a_failure_to_the_send_and_raises_it() -> None:
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def fails() -> None:
        await gate

    pending = step(fails(), WriteCounts())
    assert pending is not None
    gate.set_exception(ConnectionResetError("gone"))
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(pending, 5)


async def test_cancelling_a_suspended_send_closes_its_coroutine() -> None:
    closed: list[bool] = []

    async def waits() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            closed.append(True)

    pending = step(waits(), WriteCounts())
    assert pending is not None
    task = asyncio.ensure_future(pending)
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert closed == [True]


@pytest.mark.parametrize(
    ("line", "status"),
    [
        (b"GET /?" + b"q" * 9000 + b" HTTP/1.1\r\n", b"414"),
        (b"GET / HTTP/1.1\r\nX-Big: " + b"h" * 9000 + b"\r\n", b"431"),
    ],
    ids=["request line over the limit", "header over the limit"],
)
async def test_a_handshake_over_the_limits_is_answered_and_closed_at_once(
    server: Server, line: bytes, status: bytes
) -> None:
    request = (
        line + b"Host: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(request)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)  # to EOF: the server closed
    finally:
        writer.close()
    assert answer.split(b" ", 2)[1] == status, answer[:200]


async def test_a_handshake_within_the_limits_still_upgrades(server: Server) -> None:
    client = await connect(server.ws_url + "?" + "q" * 4000, open_timeout=10)
    async with client:
        conn = await server.app.next()
        assert conn.scope["type"] == "websocket"


def test_nothing_listens_after_the_server_stops() -> None:
    async def run() -> int:
        async with serving() as s:
            return s.port

    port = asyncio.run(run())
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0
