"""A real uvicorn server on a loopback port, in the test's own event loop, whose ASGI app
hands each connection's ``send`` to the test: the transports are then driven from the
test as a pod's writer drives them, and a real client reads what reaches the wire."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.types import Receive, Scope, Send

from clarion.transport import websocket_protocol


@dataclass
class Connection:
    """One connection the server accepted: its ASGI ``send``, and ``done`` to end its app."""

    scope: Scope
    send: Send
    done: asyncio.Event = field(default_factory=asyncio.Event)
    #: What the app received until it ended (``websocket.disconnect``, ``http.disconnect``).
    received: list[Any] = field(default_factory=list)


class App:
    """Accepts WebSockets, starts streamed HTTP responses, and queues each connection."""

    def __init__(self) -> None:
        self.connections: asyncio.Queue[Connection] = asyncio.Queue()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return
        conn = Connection(scope, send)
        if scope["type"] == "websocket":
            assert (await receive())["type"] == "websocket.connect"
            await send({"type": "websocket.accept"})
            end = "websocket.disconnect"
        else:
            headers = [(b"content-type", b"text/plain")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            end = "http.disconnect"
        self.connections.put_nowait(conn)

        async def read() -> None:
            while True:
                message = await receive()
                conn.received.append(message)
                if message["type"] == end:
                    return

        reader = asyncio.ensure_future(read())
        ended = asyncio.ensure_future(conn.done.wait())
        try:
            await asyncio.wait((reader, ended), return_when=asyncio.FIRST_COMPLETED)
        finally:
            reader.cancel()
            ended.cancel()

    async def next(self, timeout: float = 10.0) -> Connection:
        return await asyncio.wait_for(self.connections.get(), timeout)


@dataclass
class Server:
    app: App
    port: int

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"


@contextlib.asynccontextmanager
async def serving(**config: Any) -> AsyncIterator[Server]:
    """uvicorn with Clarion's WebSocket protocol (server.py's ``ws=``), on a free port."""
    app = App()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            ws=websocket_protocol(),
            lifespan="off",
            log_level="warning",
            timeout_graceful_shutdown=1,
            **config,
        )
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(10):
            while not server.started:
                assert not task.done(), "uvicorn did not start"
                await asyncio.sleep(0.01)
        yield Server(app, sock.getsockname()[1])
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()
