"""streams.py's ``StreamTransport``: the writer's seam over a streamed HTTP response (SSE and
NDJSON), on a real in-process uvicorn with a real HTTP client reading the body.

What must hold for a newcomer changing it: each frame goes out as one event in its format
and in order, a send completes without a task while the socket is writable, a close is a
last event that ends the response, an abort is a reset, and the live bytes of a fan-out
are encoded once per pod.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import pytest

from clarion.frames import Kind, Outgoing, control, text_frame
from clarion.streams import EventStream, Format, JsonLines, StreamTransport
from clarion.transport import WriteCounts

from .servers import Connection, Server, serving

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    async with serving() as s:
        yield s


class Body:
    """The client's side of one streamed response: its bytes as they arrive."""

    def __init__(self, response: httpx.Response) -> None:
        self.chunks = response.aiter_raw()
        self.data = b""
        self.ended = False

    async def until(self, predicate: object, timeout: float = 10.0) -> bytes:
        async with asyncio.timeout(timeout):
            while not predicate(self.data):  # type: ignore[operator]
                try:
                    self.data += await anext(self.chunks)
                except StopAsyncIteration:
                    self.ended = True
                    break
        return self.data

    async def to_end(self) -> bytes:
        return await self.until(lambda _: False)


@pytest.fixture
async def stream(server: Server) -> AsyncIterator[tuple[Body, Connection]]:
    async with (
        httpx.AsyncClient(timeout=10) as http,
        http.stream("GET", server.http_url) as response,
    ):
        assert response.status_code == 200
        yield Body(response), await server.app.next()


def live(text: str, mid: str) -> Outgoing:
    """A consumed message as the hub hands it to every socket (one shared record)."""
    return Outgoing(text, len(text), Kind.LIVE, mid, 1, text_frame(text.encode()))


async def test_sse_events_arrive_in_order_and_at_once(stream: tuple[Body, Connection]) -> None:
    body, conn = stream
    counts = WriteCounts()
    t = StreamTransport(conn.send, counts, EventStream())
    assert t.send_now(live('{"n":1}', "id-1")) is None
    assert t.send_now(control('{"type":"pong"}')) is None
    await t.send(live('{"n":2}', "id-2"))
    expected = (
        b'id: id-1\ndata: {"n":1}\n\n'
        b'data: {"type":"pong"}\n\n'  # a control frame names no id: Last-Event-ID stays
        b'id: id-2\ndata: {"n":2}\n\n'
    )
    assert await body.until(lambda d: len(d) >= len(expected)) == expected
    assert (counts.frame, counts.direct, counts.asgi) == (0, 2, 1)


async def test_ndjson_lines_arrive_as_json_one_per_line(stream: tuple[Body, Connection]) -> None:
    body, conn = stream
    t = StreamTransport(conn.send, WriteCounts(), JsonLines())
    t.send_now(live('{"n":1}', "id-1"))
    t.send_now(control("pong"))  # bare text becomes a JSON string
    t.send_now(control(""))  # a keep-alive is an empty line
    data = await body.until(lambda d: d.count(b"\n") >= 3)
    assert data == b'{"n":1}\n"pong"\n\n'
    assert [json.loads(line) for line in data.splitlines() if line] == [{"n": 1}, "pong"]


@pytest.mark.parametrize(
    ("text", "wire"),
    [
        ("", b": keep-alive\n\n"),
        ("a\nb", b"data: a\ndata: b\n\n"),
        ("a\r\nb", b"data: a\ndata: b\n\n"),
        ("a\rb", b"data: a\ndata: b\n\n"),
        ("ab", b"data: ab\n\n"),
    ],
    ids=["keep-alive", "LF", "CRLF", "CR", "one line"],
)
def test_sse_data_lines(text: str, wire: bytes) -> None:
    # A line break inside an event's data would end the event early: each line its own data.
    assert EventStream().encode(control(text)) == wire


@pytest.mark.parametrize("fmt", [EventStream(), JsonLines()], ids=["sse", "ndjson"])
@pytest.mark.parametrize(
    ("code", "reason", "reconnect"),
    [
        (1001, "draining", True),
        (1012, "rebalance", True),
        (1013, "overloaded", True),
        (1008, "policy", False),
        (4500, "banned", False),
        (4499, "custom", True),
    ],
)
async def test_a_close_is_one_last_event_that_ends_the_response(
    server: Server, fmt: Format, code: int, reason: str, reconnect: bool
) -> None:
    async with (
        httpx.AsyncClient(timeout=10) as http,
        http.stream("GET", server.http_url) as response,
    ):
        body, conn = Body(response), await server.app.next()
        t = StreamTransport(conn.send, WriteCounts(), fmt)
        t.send_now(live('{"n":1}', "id-1"))
        await t.close(code, reason)
        data = await body.to_end()
    assert body.ended
    last = data.rstrip(b"\n").rsplit(b"\n\n" if fmt.name == "sse" else b"\n", 1)[-1]
    frame = json.loads(last.split(b"data: ", 1)[-1])
    assert (frame["type"], frame["code"], frame["reason"]) == ("close", code, reason)
    assert frame["reconnect"] is reconnect
    assert (frame["retry"] == 0) is not reconnect
    if fmt.name == "sse":
        # EventSource's own reconnect waits this long: never, in effect, where it cannot help.
        retry = int(last.split(b"retry: ", 1)[1].split(b"\n", 1)[0])
        assert retry == (frame["retry"] or 86_400_000)


async def test_an_abort_resets_the_response(stream: tuple[Body, Connection]) -> None:
    body, conn = stream
    t = StreamTransport(conn.send, WriteCounts(), EventStream())
    t.send_now(live('{"n":1}', "id-1"))
    await body.until(lambda d: d.endswith(b"\n\n"))
    t.abort()
    with pytest.raises(httpx.HTTPError):  # not a clean end of the body
        await body.to_end()


async def test_a_stream_whose_client_stopped_reading_stops_taking_frames_until_it_reads(
    server: Server,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port, limit=1 << 16)
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        conn = await server.app.next()
        counts = WriteCounts()
        t = StreamTransport(conn.send, counts, JsonLines())
        line = '{"x":"' + "x" * 65_000 + '"}'
        sent = 0
        pending = None
        async with asyncio.timeout(15):
            while pending is None:  # nobody reads: the socket's buffers fill up
                pending = t.send_now(control(line))
                sent += 1
                await asyncio.sleep(0)
        assert counts.direct == sent - 1
        finish = asyncio.ensure_future(pending)
        await asyncio.sleep(0.05)
        assert not finish.done()
        data = b""
        async with asyncio.timeout(15):
            while data.count(line.encode()) < sent:  # the client reads again
                data += await reader.read(1 << 20)
        await asyncio.wait_for(finish, 10)
        assert counts.asgi == 1
    finally:
        writer.close()


@pytest.mark.parametrize("fmt", [EventStream(), JsonLines()], ids=["sse", "ndjson"])
async def test_live_messages_of_one_iteration_go_out_as_one_chunk_between_asgi_sends(
    server: Server, fmt: Format
) -> None:
    """The writer's fast path on uvicorn's httptools protocol: live messages written as
    one chunk of the body, straight to the socket, in order with ASGI sends around them."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        conn = await server.app.next()
        counts = WriteCounts()
        t = StreamTransport(conn.send, counts, fmt)
        assert t.can_write_frames()
        outs = [live('{"n":1}', "id-1"), live('{"n":2}', "id-2")]
        assert t.send_now(control('{"type":"pong"}')) is None
        t.write_frames(t.frame_bytes(outs), 2)
        t.write_frames(t.frame_bytes(outs[:1]), 1)
        await t.close(1001, "bye")
        raw = b""
        async with asyncio.timeout(10):
            while not raw.endswith(b"0\r\n\r\n"):
                raw += await reader.read(65536)
    finally:
        writer.close()
    head, _, chunked = raw.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower()
    chunks = []
    while chunked:
        size, _, rest = chunked.partition(b"\r\n")
        n = int(size, 16)
        chunks.append(rest[:n])
        assert rest[n : n + 2] == b"\r\n"
        chunked = rest[n + 2 :]
    pong, both, one, close, end = chunks
    assert both == fmt.encode(outs[0]) + fmt.encode(outs[1]) and one == fmt.encode(outs[0])
    assert pong == fmt.encode(control('{"type":"pong"}')) and b"1001" in close and end == b""
    assert (counts.frame, counts.direct) == (3, 1)


def test_a_fan_out_encodes_a_live_message_once_per_pod() -> None:
    fmt = EventStream()
    out = live('{"n":1}', "id-1")
    first = fmt.encode(out)
    assert fmt.encode(out) is first  # the next socket of the fan-out: the same bytes
    other = live('{"n":1}', "id-1")  # another message record: encoded again
    assert fmt.encode(other) == first and fmt.encode(other) is not first
    # Control frames are per connection and never take the shared slot.
    fmt.encode(control("pong"))
    assert fmt.encode(other) is fmt.encode(other)
    # Several at once (a burst): each still encoded once, and the one-chunk bytes shared.
    assert fmt.encode(out) is first
    assert fmt.chunks([out]) is fmt.chunks([out])
