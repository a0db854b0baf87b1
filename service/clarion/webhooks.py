"""The webhook sender: signed POSTs from a bounded in-memory queue, retried with backoff.

Which events exist and which pod sends each is occupancy.py's business; this
module only delivers what it is given, in order, one request at a time (so a
``channel_occupied`` never overtakes the ``channel_vacated`` before it). A full
queue drops the new event and counts it; a pod killed with events queued loses
them (docs/server-api.md, Webhooks, says when that happens).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import logging
import ssl
import time
import uuid
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import h11
import orjson

from . import names
from .metrics import Metrics

log = logging.getLogger("clarion.webhooks")

#: The events a pod can send, and the field that names what they are about.
EVENTS = names.WEBHOOK_EVENTS
SIGNATURE_HEADER = "X-Clarion-Signature"
TIMESTAMP_HEADER = "X-Clarion-Timestamp"
#: The pod that sent it (for the receiver's logs; not signed).
POD_HEADER = "X-Clarion-Pod"
#: The most of a response body a Poster reads before it drops the connection.
MAX_BODY_DEFAULT = 64 * 1024
#: The longest pause between two attempts, whatever the exponent says.
MAX_BACKOFF = 30.0


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The signature header's value: HMAC-SHA256 of ``<timestamp>.<raw body>``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(
    secret: str, timestamp: str, body: bytes, signature: str, tolerance: float = 300
) -> bool:
    """What a receiver does: the signature matches and the timestamp is recent."""
    try:
        fresh = abs(time.time() - int(timestamp)) <= tolerance
    except ValueError:
        return False
    return fresh and hmac.compare_digest(sign(secret, timestamp, body), signature)


def backoff(attempt: int, base: float) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1, 2, ...)."""
    return min(MAX_BACKOFF, base * 2 ** (attempt - 1))


class Poster:
    """POSTs over one kept-alive HTTP/1.1 connection (h11 on asyncio streams).

    Not httpx: its machinery costs about 1 ms of CPU per request, h11 alone 0.13 ms
    (measured on loopback). No proxies, no redirects: a 3xx is a failed attempt.
    """

    #: The most of a response body read before the connection is dropped.
    MAX_BODY = MAX_BODY_DEFAULT

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.tls = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.tls else 80)
        self.target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        netloc = parts.netloc.rpartition("@")[2]
        self.headers = [("Host", netloc), ("User-Agent", "clarion-webhooks")]
        if parts.username is not None:
            creds = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            self.headers.append(
                ("Authorization", "Basic " + base64.b64encode(creds.encode()).decode())
            )
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._h11 = h11.Connection(h11.CLIENT)

    async def post(self, body: bytes, headers: dict[str, str]) -> int:
        """The response's status; raises OSError, h11.ProtocolError or EOFError."""
        return (await self.request(body, headers))[0]

    async def request(
        self, body: bytes, headers: dict[str, str], max_body: int = MAX_BODY_DEFAULT
    ) -> tuple[int, bytes | None]:
        """The response's status and body (None: longer than ``max_body``, not read);
        raises OSError, h11.ProtocolError or EOFError."""
        reused = self._streams is not None
        try:
            return await self._exchange(body, headers, max_body)
        except (OSError, h11.ProtocolError, EOFError):
            self.close()
            if not reused:
                raise
        # The receiver closed the idle connection: once more on a fresh one.
        return await self._exchange(body, headers, max_body)

    async def _exchange(
        self, body: bytes, headers: dict[str, str], max_body: int
    ) -> tuple[int, bytes | None]:
        if self._streams is None:
            context = ssl.create_default_context() if self.tls else None
            self._streams = await asyncio.open_connection(self.host, self.port, ssl=context)
            self._h11 = h11.Connection(h11.CLIENT)
        reader, writer = self._streams
        conn = self._h11
        all_headers = [*self.headers, *headers.items(), ("Content-Length", str(len(body)))]
        writer.write(
            conn.send(h11.Request(method="POST", target=self.target, headers=all_headers))
            + conn.send(h11.Data(data=body))
            + conn.send(h11.EndOfMessage())
        )
        await writer.drain()
        status, answer = 0, bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(65536)
                if not data and not status:
                    raise EOFError("connection closed before a response")
                conn.receive_data(data)
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                answer += event.data
                if len(answer) > max_body:
                    self.close()
                    return status, None
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                break
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        else:
            self.close()
        return status, bytes(answer)

    def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None


@dataclass(frozen=True)
class Event:
    event: str
    name: str
    ts: int
    id: str

    def body(self) -> bytes:
        return orjson.dumps(
            {"event": self.event, EVENTS[self.event]: self.name, "ts": self.ts, "id": self.id}
        )


class Webhooks:
    def __init__(
        self,
        url: str,
        secret: str,
        events: list[str],
        metrics: Metrics,
        *,
        pod_name: str,
        queue_size: int,
        retries: int,
        retry_delay: float,
        timeout: float,
    ) -> None:
        self.url = url
        self._secret = secret
        self.events = frozenset(events)
        self.pod_name = pod_name
        self.metrics = metrics
        self.retries = retries
        self.retry_delay = retry_delay
        self.timeout = timeout
        self._queue: asyncio.Queue[Event] = asyncio.Queue(queue_size)
        self._task: asyncio.Task[None] | None = None
        self._poster = Poster(url)

    def wants(self, event: str) -> bool:
        return event in self.events

    def enqueue(self, event: str, name: str) -> bool:
        """Queue one event (never waits); False, counted as dropped, when the queue is full."""
        if event not in self.events:
            return False
        item = Event(event, name, int(time.time() * 1000), uuid.uuid4().hex)
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self.metrics.webhook_events.labels(event=event, result="dropped").inc()
            log.warning("webhook queue full: %s %s dropped", event, name)
            return False
        self.metrics.webhook_queue.set(self._queue.qsize())
        return True

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="webhooks")

    async def stop(self, drain: float) -> None:
        """Send what is queued for up to ``drain`` seconds, then give up on the rest."""
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), drain)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._poster.close()

    async def _run(self) -> None:
        while True:
            item = await self._queue.get()
            try:
                ok = await self._deliver(item)
                result = "sent" if ok else "failed"
                self.metrics.webhook_events.labels(event=item.event, result=result).inc()
            finally:
                self._queue.task_done()
                self.metrics.webhook_queue.set(self._queue.qsize())

    async def _deliver(self, item: Event) -> bool:
        """POST one event until a 2xx, at most ``1 + retries`` times."""
        body = item.body()
        attempt = 0
        while True:
            attempt += 1
            timestamp = str(int(time.time()))  # signed anew: a late retry is not stale
            headers = {
                "Content-Type": "application/json",
                SIGNATURE_HEADER: sign(self._secret, timestamp, body),
                TIMESTAMP_HEADER: timestamp,
                POD_HEADER: self.pod_name,
            }
            try:
                async with asyncio.timeout(self.timeout):
                    status = await self._poster.post(body, headers)
                if 200 <= status < 300:
                    return True
                why = f"HTTP {status}"
            except (TimeoutError, OSError, h11.ProtocolError, EOFError) as exc:
                self._poster.close()  # its state is unknown: a fresh connection next time
                why = type(exc).__name__
            if attempt > self.retries:
                log.warning(
                    "webhook %s %s (id %s) failed after %d attempts: %s",
                    item.event,
                    item.name,
                    item.id,
                    attempt,
                    why,
                )
                return False
            await asyncio.sleep(backoff(attempt, self.retry_delay))
