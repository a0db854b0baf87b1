"""The tests' WebSocket client: one real connection that records every frame it receives.

``Client`` is a socket as a test sees it (frames, messages with their arrival time,
how and when the server closed it); ``User`` is one user across reconnects, coming
back with ``since=<last id>`` as a browser would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection


class Client:
    """One real WebSocket connection; frames are collected by a reader task."""

    def __init__(self, ws: ClientConnection, name: str = "") -> None:
        self.ws = ws
        self.name = name
        self.frames: list[Any] = []  # JSON frames decoded, anything else as received
        self.messages: list[dict[str, Any]] = []  # the "message" frames
        self.received_at: list[float] = []  # wall time each of ``messages`` arrived
        self.welcome: dict[str, Any] = {}
        self.close_code: int | None = None
        self.close_reason: str = ""
        self.closed_at: float | None = None  # monotonic
        self._news = asyncio.Event()  # set on every frame and on the close
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, url: str, name: str = "", **kw: Any) -> Client:
        """Open ``url``; ``kw`` goes to ``websockets.connect`` (headers, origin, ping_interval)."""
        ws = await websockets.connect(url, max_size=None, open_timeout=10, **kw)
        return cls(ws, name or "client")  # not the URL: it may carry a token

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                now = time.time()
                try:
                    frame: Any = json.loads(raw)
                except (ValueError, TypeError):
                    frame = raw
                self.frames.append(frame)
                if isinstance(frame, dict) and frame.get("type") == "message":
                    self.messages.append(frame)
                    self.received_at.append(now)
                self._news.set()
        except websockets.ConnectionClosed:
            pass
        finally:
            self.closed_at = time.monotonic()
            self.close_code = self.ws.close_code
            self.close_reason = self.ws.close_reason or ""
            self._news.set()

    @property
    def closed(self) -> bool:
        return self._reader.done()

    def of_type(self, ftype: str) -> list[dict[str, Any]]:
        return [f for f in self.frames if isinstance(f, dict) and f.get("type") == ftype]

    def data(self) -> list[Any]:
        return [m["data"] for m in self.messages]

    async def until(self, find: Callable[[], Any], timeout: float = 10, what: str = "frame") -> Any:
        """``find()`` once it is truthy, checked on every frame the socket receives (no
        polling); fails after ``timeout``, or at once if the socket closed first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            value = find()
            if value:
                return value
            if self.closed:
                raise AssertionError(
                    f"{self.name}: closed {self.close_code} {self.close_reason!r} "
                    f"while waiting for {what}"
                )
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"{self.name}: timed out after {timeout}s waiting for {what}")
            self._news.clear()  # no await since find(): nothing was missed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._news.wait(), remaining)

    async def wait_welcome(self, timeout: float = 10) -> dict[str, Any]:
        """The welcome frame; fails at once, with the close code, if the server closed instead."""
        self.welcome = (await self.until(lambda: self.of_type("welcome"), timeout, "welcome"))[0]
        return self.welcome

    async def wait_frame(
        self, pred: Callable[[Any], Any], timeout: float = 10, what: str = "frame"
    ) -> Any:
        return await self.until(
            lambda: next((f for f in self.frames if pred(f)), None), timeout, what
        )

    async def wait_reply(self, ftype: str, count: int = 1, timeout: float = 5) -> dict[str, Any]:
        """The ``count``-th frame of type ``ftype``."""
        frames: list[dict[str, Any]] = await self.until(
            lambda: len(self.of_type(ftype)) >= count and self.of_type(ftype),
            timeout,
            f"{ftype} frame #{count}",
        )
        return frames[count - 1]

    async def wait_data(self, value: Any, timeout: float = 10) -> dict[str, Any]:
        return await self.wait_frame(
            lambda f: isinstance(f, dict) and f.get("type") == "message" and f["data"] == value,
            timeout,
            f"message with data {value!r}",
        )

    async def wait_closed(self, timeout: float = 10) -> int | None:
        """Wait until the server closes the socket; its close code."""
        await self.until(lambda: self.closed or None, timeout, "close")
        return self.close_code

    async def send(self, frame: Any) -> None:
        await self.ws.send(frame if isinstance(frame, str | bytes) else json.dumps(frame))

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), 3)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._reader, 3)


async def refused(url: str, **kw: Any) -> tuple[int | None, str, list[Any]]:
    """Connect and return how the server closed the socket, and what it sent before."""
    client = await Client.connect(url, **kw)
    await client.wait_closed()
    return client.close_code, client.close_reason, client.frames


class User:
    """One user's client across reconnects, as docs/failure-modes.md's recovery recipe
    has an application write it: it keeps the greatest message id it has seen (ids
    sort by publish time; a replay can deliver an older one last), comes back with
    ``since=`` to whichever pod it is given and re-subscribes its channels with the
    same ``since``."""

    def __init__(self, name: str, channels: Sequence[str] = ()) -> None:
        self.name = name
        self.channels = list(channels)
        self.ids: list[str] = []  # received message ids, in arrival order
        self.data: list[Any] = []
        #: The greatest id received (the first welcome's position until one arrives).
        self.last_id: str | None = None
        self.welcomes: list[dict[str, Any]] = []
        self.subscribed: list[dict[str, Any]] = []
        self.reconnects = 0
        self.client: Client | None = None
        self._seen = 0

    async def connect(self, ws_url: str, timeout: float = 10) -> Client:
        since = self.last_id
        url = f"{ws_url}?user={self.name}"
        if since:
            url += f"&since={since}"
            self.reconnects += 1
        self.client = client = await Client.connect(url, self.name)
        self._seen = 0
        welcome = await client.wait_welcome(timeout)
        self.welcomes.append(welcome)
        if self.last_id is None:
            # Nothing received yet: recover from the welcome's position (the recipe).
            self.last_id = welcome.get("position")
        for n, channel in enumerate(self.channels, 1):
            frame: dict[str, Any] = {"type": "subscribe", "channel": channel}
            if since:
                frame["since"] = since
            await client.send(frame)
            self.subscribed.append(await client.wait_reply("subscribed", n, timeout))
        return client

    def drain(self) -> None:
        """Move the messages the current socket received since the last call into
        the bookkeeping."""
        if self.client is None:
            return
        msgs = self.client.messages
        for m in msgs[self._seen :]:
            self.ids.append(m["id"])
            self.data.append(m["data"])
            if self.last_id is None or m["id"] > self.last_id:
                self.last_id = m["id"]
        self._seen = len(msgs)

    async def close(self) -> None:
        if self.client is not None:
            self.drain()
            await self.client.close()
