"""An HTTP stream behind the subscriber's connection seam, where WebSocket is blocked.

The server offers two HTTP streams beside ``/ws`` (docs/streams.md): ``GET /sse``
(Server-Sent Events) and ``GET /stream`` (newline-delimited JSON). They carry the
frames a WebSocket would, in the same order; the client's own frames (subscribe,
unsubscribe, refresh, ping) go up with ``POST /emulation``, one request at a time
(so they arrive in order, on whichever pod), batched, naming the stream with the
session token of its welcome. ``StreamLink`` gives the subscriber the three
things it uses of a WebSocket (``recv``, iteration, ``send``), so the
subscriber's guarantees (greatest-id ``since``, duplicate drop, close-code
policy, token refresh, resync) are one piece of code on every transport.

A stream ends with ``Ended``: the server's last ``close`` frame (its code and
reason: the subscriber reads it), a refusal before the stream (401/403 with a
close code in the body), or 1006 for anything else: the network, a silent
stream, or a POST that failed (its frames' answers would never come, so the
stream is dropped and the reconnect recovers with ``since``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import httpx
import orjson

from .types import LOST

Transport = Literal["websocket", "sse", "http_stream"]
#: Every transport, and the path of each (the WebSocket's is the URL given).
PATHS: dict[str, str] = {"websocket": "/ws", "sse": "/sse", "http_stream": "/stream"}
#: Frames one POST may carry (the server's emulation.MAX_FRAMES).
MAX_POSTED = 100


class Ended(Exception):
    """A connection's end on any transport: the close code and reason."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


def http_url(ws_url: str, path: str) -> str:
    """``wss://host/prefix/ws?x`` -> ``https://host/prefix/<path>?x`` (as the JS client)."""
    parts = urlsplit(ws_url)
    base = parts.path[:-3] if parts.path.endswith("/ws") else parts.path
    scheme = "https" if parts.scheme == "wss" else "http"
    return urlunsplit(parts._replace(scheme=scheme, path=base.rstrip("/") + path))


class StreamLink:
    """One HTTP stream: frames down (``recv``, ``async for``), frames up (``send``)."""

    def __init__(self, http: httpx.AsyncClient, url: str, emulation_url: str, ndjson: bool):
        self._http = http
        self._url = url
        self._emulation_url = emulation_url
        self._ndjson = ndjson
        #: The welcome's session token (the subscriber sets it): what POSTs name.
        self.session: str | None = None
        self._response: httpx.Response | None = None
        self._frames: AsyncIterator[str] | None = None
        self._queue: list[str] = []
        self._poster: asyncio.Task[None] | None = None
        #: Why a POST failed (the stream was dropped for it).
        self._failure: str | None = None

    async def __aenter__(self) -> StreamLink:
        request = self._http.build_request("GET", self._url, headers={"Cache-Control": "no-cache"})
        try:
            response = await self._http.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise Ended(LOST, str(exc) or type(exc).__name__) from None
        if response.status_code != 200:
            # A refusal before the stream (401, 403) names its close code in the body.
            try:
                body = orjson.loads(await response.aread())
            except (httpx.HTTPError, orjson.JSONDecodeError):
                body = None
            finally:
                await response.aclose()
            if isinstance(body, dict) and isinstance(body.get("code"), int):
                raise Ended(body["code"], str(body.get("reason") or body.get("error")))
            raise Ended(LOST, f"HTTP {response.status_code}")
        self._response = response
        self._frames = self._read(response)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._poster is not None:
            self._poster.cancel()
        if self._frames is not None:
            with contextlib.suppress(Exception):
                await self._frames.aclose()  # type: ignore[attr-defined]
        if self._response is not None:
            await self._response.aclose()

    async def recv(self) -> str:
        assert self._frames is not None
        return await anext(self._frames)

    def __aiter__(self) -> AsyncIterator[str]:
        assert self._frames is not None
        return self._frames

    async def send(self, message: str, /) -> None:
        """Queue a client frame; the frames of one turn go in one POST."""
        if self._failure is not None:
            return
        self._queue.append(message)
        if self._poster is None or self._poster.done():
            self._poster = asyncio.create_task(self._post())

    async def _post(self) -> None:
        await asyncio.sleep(0)  # the frames of this turn in one POST
        while self._queue:
            frames, self._queue = self._queue[:MAX_POSTED], self._queue[MAX_POSTED:]
            body = orjson.dumps({"session": self.session, "frames": frames})
            try:
                r = await self._http.post(
                    self._emulation_url,
                    content=body,
                    headers={"Content-Type": "application/json"},
                )
                status = r.status_code
            except httpx.HTTPError:
                status = 0
            if status >= 300 or status == 0:
                self._failure = f"POST /emulation: {status or 'failed'}"
                self._queue.clear()
                if self._response is not None:
                    await self._response.aclose()  # the reader ends with the failure
                return

    async def _read(self, response: httpx.Response) -> AsyncIterator[str]:
        data: list[str] = []
        try:
            async for line in response.aiter_lines():
                if self._ndjson:
                    if line:
                        yield line
                elif not line:
                    # An event ends: its data lines are one frame (a comment has none).
                    if data:
                        yield "\n".join(data)
                    data = []
                elif line.startswith("data:"):
                    data.append(line[6:] if line[5:6] == " " else line[5:])
        except (httpx.HTTPError, httpx.StreamError) as exc:
            raise Ended(LOST, self._failure or str(exc) or type(exc).__name__) from None
        raise Ended(LOST, self._failure or "stream ended")


def close_of(frame: dict[str, Any]) -> Ended:
    """The stream's last frame ``{"type": "close", "code", "reason", ...}`` as an end."""
    code = frame.get("code")
    return Ended(code if isinstance(code, int) else LOST, str(frame.get("reason") or "closed"))
