"""Publishing from a backend: ``POST /api/publish`` with retries.

A 503 means the broker did not confirm (nothing was accepted) and a
connection error or a timeout leaves the caller unsure, so both are retried
with backoff. Every message carries an idempotency key, the same on each
retry (an ``Idempotency-Key`` header for one message, an ``idempotency_key``
field per message of a batch), so that a retry cannot deliver twice: the
server answers a known key with the first message's id and delivers it once.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import httpx

from .policy import Backoff


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


class _Base:
    def __init__(
        self,
        url: str,
        api_key: str | None,
        retries: int,
        backoff: Backoff | None,
        timeout: float,
    ) -> None:
        self.url = url.rstrip("/") + "/api/publish"
        self.api_key = api_key
        self.retries = retries
        self.timeout = timeout
        self._backoff = backoff or Backoff(base=0.2, max=5.0)

    def _headers(self, key: str | None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        if key is not None:
            headers["Idempotency-Key"] = key
        return headers

    def _delay(self, attempt: int) -> float:
        """Full jitter with this publish's own attempt count (publishers share no state)."""
        ceiling = min(self._backoff.max, self._backoff.base * 2**attempt)
        return self._backoff.random() * ceiling

    def _result(self, response: httpx.Response, batch: bool) -> Any:
        """The id (ids) of a 202; None for a retryable 503; PublishError otherwise."""
        if response.status_code == 202:
            body = response.json()
            return body["ids"] if batch else body["id"]
        if response.status_code == 503:
            return None
        try:
            body = response.json()
            code, text = str(body.get("error", "error")), str(body.get("message", ""))
        except ValueError:
            code, text = "error", response.text[:200]
        raise PublishError(response.status_code, code, text)

    @staticmethod
    def _give_up(last: httpx.Response | Exception | None) -> PublishError:
        if isinstance(last, httpx.Response):
            return PublishError(503, "unavailable", last.text[:200])
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
    ) -> None:
        super().__init__(url, api_key, retries, backoff, timeout)
        self._client = client or httpx.Client(timeout=timeout)

    def publish(
        self,
        data: Any,
        *,
        user: str | None = None,
        channel: str | None = None,
        broadcast: bool = False,
        idempotency_key: str | None = None,
    ) -> str:
        """Publishes one message; returns its id once the broker confirmed it."""
        body = message(data, user=user, channel=channel, broadcast=broadcast)
        result: str = self._send(body, idempotency_key or str(uuid.uuid4()), batch=False)
        return result

    def publish_batch(self, messages: Iterable[Mapping[str, Any]]) -> list[str]:
        """Publishes a batch (all or nothing; build entries with ``message()``); returns the ids."""
        result: list[str] = self._send(_batch(messages), None, batch=True)
        return result

    def _send(self, body: dict[str, Any], key: str | None, *, batch: bool) -> Any:
        last: httpx.Response | Exception | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self._delay(attempt - 1))
            try:
                response = self._client.post(self.url, json=body, headers=self._headers(key))
            except httpx.TransportError as exc:
                last = exc
                continue
            result = self._result(response, batch)
            if result is not None:
                return result
            last = response
        raise self._give_up(last)

    def close(self) -> None:
        self._client.close()

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
    ) -> None:
        super().__init__(url, api_key, retries, backoff, timeout)
        self._client = client or httpx.AsyncClient(timeout=timeout)

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
        result: str = await self._send(body, idempotency_key or str(uuid.uuid4()), batch=False)
        return result

    async def publish_batch(self, messages: Iterable[Mapping[str, Any]]) -> list[str]:
        result: list[str] = await self._send(_batch(messages), None, batch=True)
        return result

    async def _send(self, body: dict[str, Any], key: str | None, *, batch: bool) -> Any:
        last: httpx.Response | Exception | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(self._delay(attempt - 1))
            try:
                response = await self._client.post(self.url, json=body, headers=self._headers(key))
            except httpx.TransportError as exc:
                last = exc
                continue
            result = self._result(response, batch)
            if result is not None:
                return result
            last = response
        raise self._give_up(last)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> AsyncPublisher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
