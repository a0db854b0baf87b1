"""The few RabbitMQ management-API calls the operator needs: list and delete queues.

The management URL carries its credentials (``http://user:pass@host:15672``);
the vhost comes from the gateways' AMQP URL (``amqp://…/vhost``), so the
operator looks only at the vhost its gateway uses.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import httpx

from .cleanup import QueueInfo


def vhost_of(amqp_url: str) -> str:
    """The vhost of an AMQP URL: the path without its slash; none (or empty) is ``/``."""
    path = urlsplit(amqp_url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


class Management:
    """A management-API client for one broker, used from the operator's event loop."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        parts = urlsplit(url)
        auth = None
        if parts.username is not None:
            auth = httpx.BasicAuth(unquote(parts.username), unquote(parts.password or ""))
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        base = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        self._client = httpx.AsyncClient(base_url=base, auth=auth, timeout=timeout)

    async def __aenter__(self) -> Management:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def queues(self, vhost: str, prefix: str) -> list[QueueInfo]:
        """The vhost's queues whose name starts with ``prefix``, with their consumer counts."""
        r = await self._client.get(
            f"/api/queues/{quote(vhost, safe='')}",
            params={"columns": "name,consumers"},
        )
        r.raise_for_status()
        items: list[dict[str, Any]] = r.json()
        if isinstance(items, dict):  # paginated shape, when a page was asked for
            items = items.get("items", [])
        return [
            QueueInfo(str(q["name"]), int(q.get("consumers") or 0))
            for q in items
            if str(q.get("name", "")).startswith(prefix)
        ]

    async def delete_queue(self, vhost: str, name: str) -> bool:
        """Delete one queue; False if it was already gone."""
        r = await self._client.delete(f"/api/queues/{quote(vhost, safe='')}/{quote(name, safe='')}")
        if r.status_code == 404:
            return False
        r.raise_for_status()
        return True
