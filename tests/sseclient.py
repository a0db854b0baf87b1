"""The tests' HTTP stream client: one real ``GET /sse`` (or ``/stream``) that records every
event, parsed as a browser's EventSource parses it (``id:``, ``data:``, ``retry:``, comments)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any

import httpx


class Stream:
    """One real HTTP stream; events are collected by a reader task."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        self.url = url
        self.headers = headers or {}
        self.response: httpx.Response | None = None
        self.frames: list[Any] = []  # each event's data, JSON-decoded where it is JSON
        self.ids: list[str | None] = []  # each event's id: field (None: none)
        self.last_event_id: str | None = None  # as EventSource keeps it
        self.retry: int | None = None
        self.comments = 0
        self.ended = False
        self._news = asyncio.Event()
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(10, read=None))
        self._reader: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, url: str, headers: dict[str, str] | None = None) -> Stream:
        s = cls(url, headers)
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        s._reader = asyncio.create_task(s._read(ready))
        await asyncio.wait_for(ready, 10)
        return s

    async def _read(self, ready: asyncio.Future[None]) -> None:
        try:
            async with self._client.stream("GET", self.url, headers=self.headers) as r:
                self.response = r
                ready.set_result(None)
                if r.status_code != 200:
                    await r.aread()
                    return
                event: dict[str, Any] = {}
                data: list[str] = []
                async for line in r.aiter_lines():
                    if line == "":
                        if data:
                            self._dispatch(event, "\n".join(data))
                        event, data = {}, []
                    elif line.startswith(":"):
                        self.comments += 1
                        self._news.set()
                    elif line.startswith(("{", '"')):  # NDJSON: one frame per line
                        self._dispatch({}, line)
                    else:
                        name, _, value = line.partition(":")
                        value = value[1:] if value.startswith(" ") else value
                        if name == "data":
                            data.append(value)
                        elif name == "retry":
                            self.retry = int(value)
                        else:
                            event[name] = value
        except (httpx.HTTPError, asyncio.CancelledError):
            pass
        finally:
            if not ready.done():
                ready.set_result(None)
            self.ended = True
            self._news.set()

    def _dispatch(self, event: dict[str, Any], data: str) -> None:
        if "id" in event:
            self.last_event_id = event["id"]
        self.ids.append(event.get("id"))
        try:
            self.frames.append(json.loads(data))
        except ValueError:
            self.frames.append(data)
        self._news.set()

    @property
    def welcome(self) -> dict[str, Any]:
        return self.of_type("welcome")[0]

    def of_type(self, ftype: str) -> list[dict[str, Any]]:
        return [f for f in self.frames if isinstance(f, dict) and f.get("type") == ftype]

    @property
    def messages(self) -> list[dict[str, Any]]:
        return self.of_type("message")

    def data(self) -> list[Any]:
        return [m["data"] for m in self.messages]

    async def until(self, find: Callable[[], Any], timeout: float = 10, what: str = "event") -> Any:
        """``find()`` once truthy, checked on every event (no polling); fails after ``timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            value = find()
            if value:
                return value
            if self.ended:
                raise AssertionError(f"stream ended before {what}: {self.frames[-5:]}")
            left = deadline - loop.time()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {what}: {self.frames[-5:]}")
            self._news.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._news.wait(), left)

    async def wait_welcome(self) -> dict[str, Any]:
        return await self.until(lambda: self.of_type("welcome") and self.welcome, what="welcome")

    async def wait_type(self, ftype: str, n: int = 1) -> dict[str, Any]:
        frames = await self.until(lambda: len(self.of_type(ftype)) >= n and self.of_type(ftype))
        return frames[n - 1]  # type: ignore[no-any-return]

    async def wait_ended(self, timeout: float = 10) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.ended:
            left = deadline - loop.time()
            if left <= 0:
                raise AssertionError("the stream did not end")
            self._news.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._news.wait(), left)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        await self._client.aclose()
