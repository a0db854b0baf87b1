"""The publishers' HTTP: one small POST and its small answer, on kept-alive connections.

httpx costs a backend about 1.3 ms of CPU per request through its async client (over
anyio) and 0.7 ms through the sync one, for a publish whose useful work is a few
microseconds (docs/performance.md, "Against Node"). So by default the publishers send
the request themselves: headers and body in one write, on a connection kept for the
next request; the answer is parsed by websockets' HTTP/1.1 parser (async: the one its
client uses for the handshake, with chunked bodies and size limits) or by the standard
library's http.client (sync). A caller's own httpx client (``client=``), or a proxy the
environment names for the URL (``HTTP_PROXY`` and the like, which httpx honours), goes
through httpx exactly as before.

Every wire answers ``Answer`` (status and body) or raises ``WireError``: no answer (the
connection failed, timed out or broke off), which the publishers retry as they retry
``httpx.TransportError``. ``websockets.streams.StreamReader`` is not in websockets'
documented API: the versions are capped in pyproject.toml, and the distribution's own
tests (tests/test_wire.py) run this module against a scripted server.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import threading
import urllib.request
from collections.abc import Generator, Mapping
from typing import Any, NamedTuple, cast
from urllib.parse import urlsplit

import httpx
from websockets.exceptions import SecurityError
from websockets.http11 import Response
from websockets.streams import StreamReader

#: Idle connections kept per publisher (more are closed after their answer).
KEEP_IDLE = 8


class WireError(Exception):
    """No answer: the request may or may not have reached the gateway."""


class Answer(NamedTuple):
    status: int
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.body)


def encode(body: Mapping[str, Any]) -> bytes:
    """The request body, encoded as httpx's ``json=`` encodes it (the same bytes, the same
    errors: NaN is refused)."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def proxied(url: str) -> bool:
    """Whether the environment sends requests to ``url`` through a proxy (httpx's job)."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies()
    if not (parts.scheme in proxies or "all" in proxies):
        return False
    return not urllib.request.proxy_bypass(parts.hostname or "")


class _Target:
    """Where the requests go, and the fixed part of every request's head."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.tls = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.tls else 80)
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        default = parts.port is None
        self.authority = parts.netloc.rpartition("@")[2] if not default else self.host
        self.ssl = httpx.create_ssl_context() if self.tls else None


class AsyncWire:
    """POST on asyncio connections of its own (one request at a time on each)."""

    def __init__(self, url: str, timeout: float) -> None:
        self.target = _Target(url)
        self.timeout = timeout
        self._idle: list[_Connection] = []
        t = self.target
        self._head = (
            f"POST {t.path} HTTP/1.1\r\nHost: {t.authority}\r\n"
            "User-Agent: clarion-client\r\nContent-Type: application/json\r\n"
        ).encode("latin-1")

    async def post(self, body: bytes, headers: Mapping[str, str]) -> Answer:
        lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        if lines.count("\n") != len(headers) or "\r" in lines.replace("\r\n", ""):
            raise ValueError("a header holds a line break")
        head = self._head + lines.encode("latin-1")
        request = head + b"Content-Length: %d\r\n\r\n" % len(body) + body
        conn = self._take()
        done = False
        try:
            async with asyncio.timeout(self.timeout):
                if conn is None:
                    conn = await self._connect()
                answer, keep = await conn.exchange(request)
            done = keep
        except (OSError, EOFError, ValueError, LookupError, SecurityError) as exc:
            # OSError: refused, reset, timed out (TimeoutError); the others: a broken answer.
            raise WireError(str(exc) or type(exc).__name__) from exc
        finally:
            if conn is not None:
                if done and len(self._idle) < KEEP_IDLE:
                    self._idle.append(conn)
                else:
                    conn.close()
        return answer

    def _take(self) -> _Connection | None:
        while self._idle:
            conn = self._idle.pop()
            if conn.open:
                return conn
        return None

    async def _connect(self) -> _Connection:
        t = self.target
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(
            _Connection, t.host, t.port, ssl=t.ssl, server_hostname=t.host if t.tls else None
        )
        return conn

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


class _Connection(asyncio.Protocol):
    """One kept-alive connection: a request written whole, its answer parsed as it comes."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.open = False
        self._reader = StreamReader()
        self._parser: Generator[None, None, Response] | None = None
        self._answer: asyncio.Future[Response] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.open = True

    async def exchange(self, request: bytes) -> tuple[Answer, bool]:
        """The answer, and whether the connection may carry the next request."""
        assert self.transport is not None
        r = self._reader
        self._answer = asyncio.get_running_loop().create_future()
        self._parser = Response.parse(r.read_line, r.read_exact, r.read_to_eof)
        self._step()
        self.transport.write(request)
        response = await self._answer
        keep = self.open and "close" not in response.headers.get("Connection", "").lower()
        return Answer(response.status_code, bytes(response.body)), keep

    def _step(self) -> None:
        if self._parser is None or self._answer is None:
            return
        try:
            next(self._parser)
        except StopIteration as stop:
            self._parser = None
            if not self._answer.done():
                self._answer.set_result(stop.value)
        except Exception as exc:  # EOFError, a malformed answer
            self._parser = None
            if not self._answer.done():
                self._answer.set_exception(exc)
            self.close()

    def data_received(self, data: bytes) -> None:
        self._reader.feed_data(data)
        self._step()

    def eof_received(self) -> None:
        self.open = False
        self._reader.feed_eof()
        self._step()

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(exc or EOFError("connection closed before the answer"))

    def close(self) -> None:
        self.open = False
        if self.transport is not None:
            self.transport.close()


class SyncWire:
    """POST on http.client connections (one request at a time on each; any thread)."""

    def __init__(self, url: str, timeout: float) -> None:
        self.target = _Target(url)
        self.timeout = timeout
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def post(self, body: bytes, headers: Mapping[str, str]) -> Answer:
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        conn = conn or self._connection()
        keep = False
        try:
            conn.request(
                "POST",
                self.target.path,
                body=body,
                headers={"User-Agent": "clarion-client", "Content-Type": "application/json"}
                | dict(headers),
            )
            response = conn.getresponse()
            answer = Answer(response.status, response.read())
            keep = not response.will_close
        except (OSError, http.client.HTTPException) as exc:
            raise WireError(str(exc) or type(exc).__name__) from exc
        finally:
            with self._lock:
                if keep and len(self._idle) < KEEP_IDLE:
                    self._idle.append(conn)
                    conn = None
            if conn is not None:
                conn.close()
        return answer

    def _connection(self) -> http.client.HTTPConnection:
        t = self.target
        if t.tls:
            return http.client.HTTPSConnection(t.host, t.port, timeout=self.timeout, context=t.ssl)
        return http.client.HTTPConnection(t.host, t.port, timeout=self.timeout)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            with contextlib.suppress(Exception):
                conn.close()


def _json_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {"Content-Type": "application/json", **headers}


class HttpxSync:
    """A caller's own ``httpx.Client`` (``client=``), or httpx for a proxied URL."""

    def __init__(self, url: str, client: httpx.Client) -> None:
        self.url = url
        self.client = client

    def post(self, body: bytes, headers: Mapping[str, str]) -> Answer:
        try:
            r = self.client.post(self.url, content=body, headers=_json_headers(headers))
        except httpx.TransportError as exc:
            raise WireError(str(exc)) from exc
        return Answer(r.status_code, r.content)

    def close(self) -> None:
        self.client.close()


class HttpxAsync:
    """A caller's own ``httpx.AsyncClient`` (``client=``), or httpx for a proxied URL."""

    def __init__(self, url: str, client: httpx.AsyncClient) -> None:
        self.url = url
        self.client = client

    async def post(self, body: bytes, headers: Mapping[str, str]) -> Answer:
        try:
            r = await self.client.post(self.url, content=body, headers=_json_headers(headers))
        except httpx.TransportError as exc:
            raise WireError(str(exc)) from exc
        return Answer(r.status_code, r.content)

    async def aclose(self) -> None:
        await self.client.aclose()
