"""A small WebSocket test client that records every frame it receives."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection

from .support import wait_for


class Client:
    """One real WebSocket connection; frames are collected by a reader task."""

    def __init__(self, ws: ClientConnection, name: str = "") -> None:
        self.ws = ws
        self.name = name
        self.frames: list[Any] = []
        self._messages: list[dict[str, Any]] = []
        self.received_at: list[float] = []
        self.welcome: dict[str, Any] = {}
        self.close_code: int | None = None
        self.close_reason: str = ""
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, url: str, name: str = "", **kw: Any) -> Client:
        ws = await websockets.connect(url, max_size=None, open_timeout=10, **kw)
        client = cls(ws, name)
        return client

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                try:
                    frame: Any = json.loads(raw)
                except (ValueError, TypeError):
                    frame = raw
                self.frames.append(frame)
                if isinstance(frame, dict) and frame.get("type") == "message":
                    self._messages.append(frame)
                self.received_at.append(time.time())
        except websockets.ConnectionClosed:
            pass
        finally:
            self.close_code = self.ws.close_code
            self.close_reason = self.ws.close_reason or ""

    @property
    def closed(self) -> bool:
        return self._reader.done()

    def of_type(self, ftype: str) -> list[dict[str, Any]]:
        return [f for f in self.frames if isinstance(f, dict) and f.get("type") == ftype]

    @property
    def messages(self) -> list[dict[str, Any]]:
        return self._messages

    def data(self) -> list[Any]:
        return [m["data"] for m in self.messages]

    async def wait_welcome(self, timeout: float = 10) -> dict[str, Any]:
        frames = await wait_for(lambda: self.of_type("welcome"), timeout, message="welcome")
        self.welcome = frames[0]
        return self.welcome

    async def wait_frame(self, pred: Any, timeout: float = 10, what: str = "frame") -> Any:
        def find() -> Any:
            for f in self.frames:
                if pred(f):
                    return f
            return None

        return await wait_for(find, timeout, message=f"{self.name}: {what}")

    async def wait_data(self, value: Any, timeout: float = 10) -> dict[str, Any]:
        return await self.wait_frame(
            lambda f: isinstance(f, dict) and f.get("type") == "message" and f["data"] == value,
            timeout,
            f"message with data {value!r}",
        )

    async def wait_closed(self, timeout: float = 10) -> int | None:
        await wait_for(lambda: self.closed, timeout, message=f"{self.name}: close")
        return self.close_code

    async def send(self, frame: Any) -> None:
        await self.ws.send(frame if isinstance(frame, str | bytes) else json.dumps(frame))

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._reader, 5)
