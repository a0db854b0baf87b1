"""Publishing from a backend: ``POST /api/publish`` with retries.

A 503 means the broker did not confirm (nothing was accepted) and a
connection error or a timeout leaves the caller unsure, so both are retried
with backoff. Every message carries an idempotency key, the same on each
retry (an ``Idempotency-Key`` header for one message, an ``idempotency_key``
field per message of a batch), so that a retry cannot deliver twice: the
server answers a known key with the first message's id and delivers it once.

Concurrent publishes are coalesced, as Kafka producers batch: while
``max_in_flight`` requests are on their way, further ``publish()`` calls queue,
and the queue leaves as one batch request (``{"messages": [...]}``, at most
``max_batch`` messages) as soon as a request slot frees, after ``linger``
seconds if set. A pod publishes a batch as one confirmed publish of its
messages, so its HTTP request, parsing and confirm wait are paid once per batch
(docs/performance.md). A caller alone is sent at once, exactly as before. Each
caller still gets its own message's id, its own idempotency key (kept on every
retry) and its own error: a batch refused as a whole for one message (400, 413)
is sent again one message per request, so only that message fails; a 503 or a
lost connection retries the batch as it was (nothing of it was accepted, and the
keys make the retry safe).
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

import httpx

from .policy import Backoff
from .wire import Answer, AsyncWire, HttpxAsync, HttpxSync, SyncWire, WireError, encode, proxied


class PublishError(Exception):
    """The gateway refused the publish (``status`` and its ``code``), or could not be
    reached (``status`` None) after the retries."""

    def __init__(self, status: int | None, code: str, message: str) -> None:
        super().__init__(f"HTTP {status} {code}: {message}" if status else f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message


def message(
    data: Any, *, user: str | None = None, channel: str | None = None, broadcast: bool = False
) -> dict[str, Any]:
    """One publish body (or one entry of a batch): exactly one target."""
    targets = [t for t in (user is not None, channel is not None, broadcast) if t]
    if len(targets) != 1:
        raise ValueError("give exactly one of user=, channel=, broadcast=True")
    if user is not None:
        return {"user": user, "data": data}
    if channel is not None:
        return {"channel": channel, "data": data}
    return {"broadcast": True, "data": data}


def _batch(messages: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The batch body; each message gets a key of its own unless it names one."""
    items = [{"idempotency_key": str(uuid.uuid4()), **m} for m in messages]
    if not items:
        raise ValueError("a batch needs at least one message")
    return {"messages": items}


#: A coalesced batch refused whole for one of its messages: each is sent alone again.
_SPLIT = frozenset({400, 413})


class _Queued:
    """One ``publish()`` waiting in the coalescing queue: its message and its outcome."""

    __slots__ = ("done", "error", "item", "lead", "result")

    def __init__(self, item: dict[str, Any]) -> None:
        self.item = item
        self.result: str | None = None
        self.error: BaseException | None = None
        self.done = False
        #: Sync publisher: this caller's thread is to send the next batch.
        self.lead = False

    def settle(self, result: str | BaseException) -> None:
        if isinstance(result, BaseException):
            self.error = result
        else:
            self.result = result
        self.done = True


#: Statuses sent again (with the same idempotency keys): 503, the broker did not confirm;
#: 502 and 504, a proxy in front of the pods lost or gave up on the pod it chose.
RETRYABLE = frozenset({502, 503, 504})


class _Base:
    def __init__(
        self,
        url: str,
        api_key: str | None,
        retries: int,
        backoff: Backoff | None,
        timeout: float,
        max_batch: int = 100,
        max_in_flight: int = 1,
        linger: float = 0.0,
    ) -> None:
        if max_batch < 1 or max_in_flight < 1 or linger < 0:
            raise ValueError("max_batch and max_in_flight must be >= 1, linger >= 0")
        self.url = url.rstrip("/") + "/api/publish"
        self.api_key = api_key
        self.retries = retries
        self.timeout = timeout
        self.max_batch = max_batch
        self.max_in_flight = max_in_flight
        self.linger = linger
        self._backoff = backoff or Backoff(base=0.2, max=5.0)
        self._queue: deque[_Queued] = deque()
        self._in_flight = 0

    def _take(self) -> list[_Queued]:
        """The next batch off the queue (the caller holds the lock, if any)."""
        n = min(self.max_batch, len(self._queue))
        return [self._queue.popleft() for _ in range(n)]

    @staticmethod
    def _unpack(item: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """A queued message as a single request: the body and its key (a header)."""
        body = dict(item)
        return body, body.pop("idempotency_key")

    def _headers(self, key: str | None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        if key is not None:
            headers["Idempotency-Key"] = key
        return headers

    def _delay(self, attempt: int) -> float:
        """Full jitter with this publish's own attempt count (publishers share no state)."""
        ceiling = min(self._backoff.max, self._backoff.base * 2**attempt)
        return self._backoff.random() * ceiling

    def _result(self, response: Answer, batch: bool) -> Any:
        """The id (ids) of a 202; None for a retryable status; PublishError otherwise."""
        if response.status == 202:
            body = response.json()
            return body["ids"] if batch else body["id"]
        if response.status in RETRYABLE:
            return None
        try:
            body = response.json()
            code, text = str(body.get("error", "error")), str(body.get("message", ""))
        except ValueError:
            code, text = "error", response.text[:200]
        raise PublishError(response.status, code, text)

    @staticmethod
    def _give_up(last: Answer | Exception | None) -> PublishError:
        if isinstance(last, Answer):
            return PublishError(last.status, "unavailable", last.text[:200])
        return PublishError(None, "unreachable", str(last))


class Publisher(_Base):
    """Publishes through any gateway pod's HTTP API (blocking).

    >>> with Publisher("http://clarion-api:8080", api_key=KEY) as p:
    ...     p.publish({"order": 42}, user="u1")
    """

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        *,
        retries: int = 5,
        backoff: Backoff | None = None,
        timeout: float = 10.0,
        client: httpx.Client | None = None,
        max_batch: int = 100,
        max_in_flight: int = 1,
        linger: float = 0.0,
    ) -> None:
        super().__init__(url, api_key, retries, backoff, timeout, max_batch, max_in_flight, linger)
        # Its own HTTP unless given a client or behind a proxy (wire.py: httpx's CPU cost).
        if client is None and proxied(self.url):
            client = httpx.Client(timeout=timeout)
        self._wire = SyncWire(self.url, timeout) if client is None else HttpxSync(self.url, client)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)

    def publish(
        self,
        data: Any,
        *,
        user: str | None = None,
        channel: str | None = None,
        broadcast: bool = False,
        idempotency_key: str | None = None,
    ) -> str:
        """Publishes one message; returns its id once the broker confirmed it.

        Safe to call from many threads at once: their messages share batch requests.
        """
        body = message(data, user=user, channel=channel, broadcast=broadcast)
        queued = _Queued({**body, "idempotency_key": idempotency_key or str(uuid.uuid4())})
        with self._lock:
            self._queue.append(queued)
            leading = self._in_flight < self.max_in_flight
            if leading:
                self._in_flight += 1
        while True:
            if leading:
                self._lead(queued)
            with self._lock:
                while not queued.done and not queued.lead:
                    self._wake.wait()
                leading, queued.lead = queued.lead, False
                if queued.done and not leading:
                    break
        if queued.error is not None:
            raise queued.error
        assert queued.result is not None
        return queued.result

    def _lead(self, own: _Queued) -> None:
        """Send batches off the queue while ``own`` waits in it, then hand the slot on."""
        while True:
            if self.linger:
                time.sleep(self.linger)
            with self._lock:
                batch = self._take()
            outcomes = self._outcomes(batch) if batch else []
            with self._lock:
                for q, outcome in zip(batch, outcomes, strict=True):
                    q.settle(outcome)
                if self._queue and not own.done and batch:
                    continue  # ours is still queued: keep sending
                # A waiting caller takes the request slot over (or it is freed).
                heir = next((q for q in self._queue if not q.lead), None)
                if heir is None:
                    self._in_flight -= 1
                else:
                    heir.lead = True
                self._wake.notify_all()
                return

    def _outcomes(self, batch: list[_Queued]) -> list[str | BaseException]:
        try:
            return self._send_queued(batch)
        except Exception as exc:  # a bug or an odd answer: every caller hears of it
            return [exc] * len(batch)

    def _send_queued(self, batch: list[_Queued]) -> list[str | BaseException]:
        if len(batch) > 1:
            try:
                ids: list[str] = self._send({"messages": [q.item for q in batch]}, None, batch=True)
                return list(ids)
            except PublishError as exc:
                if exc.status not in _SPLIT:
                    return [exc] * len(batch)
        outcomes: list[str | BaseException] = []
        for q in batch:
            try:
                outcomes.append(self._send(*self._unpack(q.item), batch=False))
            except PublishError as exc:
                outcomes.append(exc)
        return outcomes

    def publish_batch(self, messages: Iterable[Mapping[str, Any]]) -> list[str]:
        """Publishes a batch (all or nothing; build entries with ``message()``); returns the ids."""
        result: list[str] = self._send(_batch(messages), None, batch=True)
        return result

    def _send(self, body: dict[str, Any], key: str | None, *, batch: bool) -> Any:
        last: Answer | Exception | None = None
        content, headers = encode(body), self._headers(key)
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self._delay(attempt - 1))
            try:
                response = self._wire.post(content, headers)
            except WireError as exc:
                last = exc
                continue
            result = self._result(response, batch)
            if result is not None:
                return result
            last = response
        raise self._give_up(last)

    def close(self) -> None:
        self._wire.close()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncPublisher(_Base):
    """``Publisher`` for asyncio code: the same methods, awaited."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        *,
        retries: int = 5,
        backoff: Backoff | None = None,
        timeout: float = 10.0,
        client: httpx.AsyncClient | None = None,
        max_batch: int = 100,
        max_in_flight: int = 1,
        linger: float = 0.0,
    ) -> None:
        super().__init__(url, api_key, retries, backoff, timeout, max_batch, max_in_flight, linger)
        # Its own HTTP unless given a client or behind a proxy (wire.py: httpx's CPU cost).
        if client is None and proxied(self.url):
            client = httpx.AsyncClient(timeout=timeout)
        self._wire = (
            AsyncWire(self.url, timeout) if client is None else HttpxAsync(self.url, client)
        )
        self._waiters: dict[_Queued, asyncio.Future[None]] = {}
        self._senders: set[asyncio.Task[None]] = set()

    async def publish(
        self,
        data: Any,
        *,
        user: str | None = None,
        channel: str | None = None,
        broadcast: bool = False,
        idempotency_key: str | None = None,
    ) -> str:
        body = message(data, user=user, channel=channel, broadcast=broadcast)
        queued = _Queued({**body, "idempotency_key": idempotency_key or str(uuid.uuid4())})
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[queued] = done
        self._queue.append(queued)
        if self._in_flight < self.max_in_flight:
            # A task of its own: the callers of this event-loop iteration join its batch,
            # and a caller cancelled while waiting does not cancel the others' request.
            self._in_flight += 1
            task = asyncio.ensure_future(self._sender())
            self._senders.add(task)
            task.add_done_callback(self._senders.discard)
        await asyncio.shield(done)
        if queued.error is not None:
            raise queued.error
        assert queued.result is not None
        return queued.result

    async def _sender(self) -> None:
        """Send batches off the queue until it is empty; then free the request slot."""
        try:
            while self._queue:
                await asyncio.sleep(self.linger)
                batch = self._take()
                if not batch:
                    continue
                outcomes: list[str | BaseException]
                try:
                    outcomes = await self._send_queued(batch)
                except asyncio.CancelledError:
                    gone = PublishError(None, "cancelled", "the publisher was closed")
                    self._settle(batch, [gone] * len(batch))
                    raise
                except Exception as exc:  # a bug or an odd answer: every caller hears of it
                    outcomes = [exc] * len(batch)
                self._settle(batch, outcomes)
        finally:
            self._in_flight -= 1

    def _settle(self, batch: list[_Queued], outcomes: list[str | BaseException]) -> None:
        for q, outcome in zip(batch, outcomes, strict=True):
            q.settle(outcome)
            fut = self._waiters.pop(q)
            if not fut.done():
                fut.set_result(None)

    async def _send_queued(self, batch: list[_Queued]) -> list[str | BaseException]:
        if len(batch) > 1:
            try:
                ids: list[str] = await self._send(
                    {"messages": [q.item for q in batch]}, None, batch=True
                )
                return list(ids)
            except PublishError as exc:
                if exc.status not in _SPLIT:
                    return [exc] * len(batch)
        outcomes: list[str | BaseException] = []
        for q in batch:
            try:
                outcomes.append(await self._send(*self._unpack(q.item), batch=False))
            except PublishError as exc:
                outcomes.append(exc)
        return outcomes

    async def publish_batch(self, messages: Iterable[Mapping[str, Any]]) -> list[str]:
        result: list[str] = await self._send(_batch(messages), None, batch=True)
        return result

    async def _send(self, body: dict[str, Any], key: str | None, *, batch: bool) -> Any:
        last: Answer | Exception | None = None
        content, headers = encode(body), self._headers(key)
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(self._delay(attempt - 1))
            try:
                response = await self._wire.post(content, headers)
            except WireError as exc:
                last = exc
                continue
            result = self._result(response, batch)
            if result is not None:
                return result
            last = response
        raise self._give_up(last)

    async def aclose(self) -> None:
        """Waits for the publishes already queued, then closes the connections."""
        if self._senders:
            await asyncio.gather(*self._senders, return_exceptions=True)
        await self._wire.aclose()

    async def __aenter__(self) -> AsyncPublisher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
