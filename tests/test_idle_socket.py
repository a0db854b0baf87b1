"""What an idle socket keeps, on a real pod (docs/performance.md, "Memory per idle socket").

A pod holds its sockets for hours, so what each keeps after its handshake is paid per
socket. Clarion's uvicorn protocol (transport.py) gives uvicorn a lighter receive queue
and writable flag, and drops the handshake's request, response and the scope's headers
once the socket is accepted. An upgrade of uvicorn or websockets that renamed what it
drops would quietly bring the kilobytes back: these tests look at a real pod's socket and
fail if it does. How much it saves is the benchmark's to say (bench/README.md, S3), not a
test's.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import httpx
import pytest
from websockets.http11 import Request

from clarion.transport import Inbox, Writable

from .support import InProcessPod
from .wsclient import Client

pytestmark = pytest.mark.timeout(30)

#: As a browser sends it: the largest part of a handshake's headers.
COOKIE = "session=" + "c" * 2000


def socket_protocols(pod: InProcessPod) -> list[Any]:
    """The pod's WebSocket protocol objects (uvicorn's server state lists every connection)."""
    state = pod._server.server_state
    return [p for p in list(state.connections) if hasattr(p, "release_handshake")]


def parser_requests(proto: Any) -> list[Request]:
    """The requests alive in the frames of websockets' parser (it keeps the one it parsed)."""
    found = []
    gen = proto.conn.parser
    while gen is not None and inspect.isgenerator(gen):
        frame = gen.gi_frame
        if frame is not None:
            found += [v for v in frame.f_locals.values() if isinstance(v, Request)]
        gen = gen.gi_yieldfrom
    return found


async def test_an_accepted_socket_keeps_no_handshake_and_no_asyncio_queue() -> None:
    async with InProcessPod(auth="none") as pod:
        client = await Client.connect(
            f"{pod.ws_url}?user=idle", additional_headers={"Cookie": COOKIE}
        )
        try:
            await client.wait_welcome()
            (proto,) = socket_protocols(pod)
            assert type(proto.queue) is Inbox
            assert type(proto.writable) is Writable
            assert proto.request is None and proto.response is None
            assert proto.scope["headers"] == []
            assert all(len(r.headers) == 0 for r in parser_requests(proto))

            # And the socket works as before: client frames, pushed messages, ping/pong.
            await client.send({"type": "ping"})
            await client.wait_reply("pong")
            async with httpx.AsyncClient() as http:
                r = await http.post(
                    f"{pod.http_url}/api/publish", json={"user": "idle", "data": 1}, timeout=10
                )
            assert r.status_code == 202
            await client.wait_data(1)
            await asyncio.wait_for(await client.ws.ping(), 10)
        finally:
            await client.close()


async def test_the_inbox_hands_messages_over_in_order_and_none_is_lost_to_a_cancel() -> None:
    inbox = Inbox()
    assert inbox.empty()
    inbox.put_nowait(1)
    inbox.put_nowait(2)
    assert [await inbox.get(), await inbox.get()] == [1, 2]
    assert inbox.empty()

    # A reader waiting when a message arrives gets it; one cancelled after it was woken
    # leaves it to the next reader.
    first = asyncio.ensure_future(inbox.get())
    second = asyncio.ensure_future(inbox.get())
    await asyncio.sleep(0)
    inbox.put_nowait(3)
    first.cancel()
    assert await asyncio.wait_for(second, 5) == 3
    assert first.cancelled()

    waiting = asyncio.ensure_future(inbox.get())
    await asyncio.sleep(0)
    inbox.put_nowait(4)
    inbox.put_nowait(5)
    assert await asyncio.wait_for(waiting, 5) == 4
    assert (inbox.qsize(), await inbox.get(), inbox.qsize()) == (1, 5, 0)


async def test_writable_waits_only_while_cleared() -> None:
    writable = Writable()
    assert writable.is_set()
    # Set: the wait completes without suspending (a send then needs no task).
    waiting = writable.wait()
    with pytest.raises(StopIteration):
        waiting.send(None)

    writable.clear()
    waiters = [asyncio.ensure_future(writable.wait()) for _ in range(2)]
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters)
    writable.set()
    assert await asyncio.wait_for(asyncio.gather(*waiters), 5) == [True, True]
