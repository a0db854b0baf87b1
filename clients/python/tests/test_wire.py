"""The publishers' own HTTP (wire.py) against a scripted HTTP server: kept-alive
connections, the answers a proxy may give (chunked, ``Connection: close``), and a
connection that breaks off before its answer (retried with the same key)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import orjson
import pytest
from fakes import fast

from clarion_client import AsyncPublisher, Publisher

pytestmark = pytest.mark.timeout(30)

#: One answer per request, in order: the bytes to write after reading it (None: hang up).
Script = list[Callable[[bytes], bytes | None]]


def answer(
    status: int, body: dict[str, object], *, chunked: bool = False, close: bool = False
) -> Callable[[bytes], bytes]:
    def write(_: bytes) -> bytes:
        data = orjson.dumps(body)
        head = f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
        if close:
            head += "Connection: close\r\n"
        if chunked:
            half = len(data) // 2
            return (
                f"{head}Transfer-Encoding: chunked\r\n\r\n".encode()
                + b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n"
                % (half, data[:half], len(data) - half, data[half:])
            )
        return f"{head}Content-Length: {len(data)}\r\n\r\n".encode() + data

    return write


class Server:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.requests: list[tuple[int, bytes, bytes]] = []  # (connection, head, body)
        self.connections = 0
        self.url = ""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = self.connections
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                body = await reader.readexactly(length)
                self.requests.append((conn, head, body))
                out = self.script[len(self.requests) - 1](body)
                if out is None:
                    return
                writer.write(out)
                if b"Connection: close" in out:
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()

    def key(self, i: int) -> bytes:
        head = self.requests[i][1]
        return next(x for x in head.split(b"\r\n") if x.lower().startswith(b"idempotency-key"))


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Script], Awaitable[Server]]]:
    """Starts scripted servers on loopback; closes them after the test."""
    made: list[asyncio.Server] = []

    async def make(script: Script) -> Server:
        s = Server(script)
        srv = await asyncio.start_server(s.handle, "127.0.0.1", 0)
        s.url = f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}"
        made.append(srv)
        return s

    yield make
    for srv in made:
        srv.close()
        await srv.wait_closed()


OK = answer(202, {"id": "m1"})


async def test_connections_are_kept_alive_and_chunked_and_closing_answers_are_read(
    serve: Callable[[Script], Awaitable[Server]],
) -> None:
    s = await serve([OK, answer(202, {"id": "m2"}, chunked=True, close=True), OK])
    async with AsyncPublisher(s.url, "k") as pub:
        got = [await pub.publish(i, user="u1") for i in range(3)]
    assert got == ["m1", "m2", "m1"]
    # The first two on one connection; the second answer closed it.
    assert [c for c, _, _ in s.requests] == [1, 1, 2]
    assert orjson.loads(s.requests[0][2]) == {"user": "u1", "data": 0}
    assert b"Authorization: Bearer k" in s.requests[0][1]


async def test_an_answer_never_given_is_retried_with_the_same_key(
    serve: Callable[[Script], Awaitable[Server]],
) -> None:
    s = await serve([lambda _: None, OK])
    async with AsyncPublisher(s.url, backoff=fast()) as pub:
        assert await pub.publish(1, user="u1") == "m1"
    assert len(s.requests) == 2 and s.key(0) == s.key(1)


async def test_the_sync_publisher_keeps_its_connection_and_retries_a_lost_answer(
    serve: Callable[[Script], Awaitable[Server]],
) -> None:
    s = await serve([OK, answer(202, {"id": "m2"}, chunked=True), lambda _: None, OK])

    def publish() -> list[str]:
        with Publisher(s.url, backoff=fast()) as pub:
            return [pub.publish(i, user="u1") for i in range(3)]

    assert await asyncio.to_thread(publish) == ["m1", "m2", "m1"]
    assert [c for c, _, _ in s.requests] == [1, 1, 1, 2]
    assert s.key(2) == s.key(3)
