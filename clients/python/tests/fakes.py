"""A scripted gateway and the helpers the client's tests share: a real WebSocket server
(websockets) that plays one step per connection, and a recorder of what the subscriber
reports. Nothing here needs the server: the client's tests run where only clarion-client
and pytest are installed."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import orjson
from websockets.asyncio.server import ServerConnection, serve

from clarion_client import Backoff, Message, Recovery, StateChange, Subscriber

T = TypeVar("T")


async def wait_for(
    predicate: Callable[[], T], timeout: float = 10.0, message: str = "condition"
) -> T:
    """Poll ``predicate`` until it is truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        await asyncio.sleep(0.02)
    return value


def token(claims: dict[str, Any]) -> str:
    """A JWT-shaped token with these claims (unsigned: the client only reads ``exp``)."""

    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(claims)}.sig"


def claims(jwt: str) -> dict[str, Any]:
    part = jwt.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))))


@contextmanager
def refusing_port() -> Iterator[int]:
    """A loopback port held open but not listening: every connection to it is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])


Step = Callable[[ServerConnection], Awaitable[None]]


class FakeGateway:
    """A real WebSocket server that plays one step per connection (then holds sockets
    open after a welcome), recording each connection's query and frames."""

    def __init__(self, steps: list[Step]) -> None:
        self.steps = steps
        self.queries: list[dict[str, str]] = []
        self.frames: list[list[dict[str, Any]]] = []
        self.url = ""

    async def handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        query = {k: v[0] for k, v in parse_qs(urlsplit(ws.request.path).query).items()}
        self.queries.append(query)
        frames: list[dict[str, Any]] = []
        self.frames.append(frames)
        n = len(self.queries) - 1

        async def read() -> None:
            async for raw in ws:
                frames.append(orjson.loads(raw))

        reader = asyncio.create_task(read())
        try:
            await (self.steps[n] if n < len(self.steps) else hold)(ws)
        finally:
            reader.cancel()

    async def __aenter__(self) -> FakeGateway:
        self._server = await serve(self.handler, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}/ws"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        await self._server.wait_closed()


async def welcome(ws: ServerConnection, **extra: Any) -> None:
    await ws.send(
        orjson.dumps({"type": "welcome", "pod": "fake", "conn": "c", "user": "u", **extra})
    )


async def hold(ws: ServerConnection) -> None:
    await welcome(ws)
    await ws.wait_closed()


def then_close(code: int, *, welcomed: bool = True) -> Step:
    async def step(ws: ServerConnection) -> None:
        if welcomed:
            await welcome(ws)
        if code == 1006:
            ws.transport.abort()  # no close frame
        else:
            await ws.close(code, f"closing {code}")

    return step


def fast(**kw: Any) -> Backoff:
    """Top-of-range delays, small enough for tests."""
    return Backoff(
        **{"base": 0.05, "max": 0.4, "soon": 0.05, "slow_min": 0.2, "random": lambda: 0.999, **kw}
    )


def msg(mid: str, **target: Any) -> bytes:
    return orjson.dumps({"type": "message", "id": mid, "target": target, "data": mid, "ts": 1})


def ids(n: int, start: int = 0) -> list[str]:
    """Ids that sort like UUIDv7s do."""
    return [f"0190a000-0000-7000-8000-{i:012d}" for i in range(start, start + n)]


class Recorder:
    def __init__(self) -> None:
        self.states: list[StateChange] = []
        self.recoveries: list[Recovery] = []
        self.errors: list[tuple[str, str]] = []

    def subscriber(self, url: str, **kw: Any) -> Subscriber:
        kw.setdefault("user", "u")
        kw.setdefault("backoff", fast())
        return Subscriber(
            url,
            on_state=self.states.append,
            on_recovery=self.recoveries.append,
            on_error=lambda c, m: self.errors.append((c, m)),
            **kw,
        )

    def delays(self) -> list[float]:
        return [s.delay for s in self.states if s.delay is not None]


async def collect(sub: Subscriber, into: list[Message]) -> None:
    async for m in sub:
        into.append(m)
