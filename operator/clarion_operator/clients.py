"""HTTP clients of the services the operator talks to (besides Kubernetes): the broker's
management API and the gateway pods' own endpoints.

Nothing here decides anything: a call that fails gives None or 0, never a
guess, and the deciders make of it what they must.

The management URL carries its credentials (``http://user:pass@host:15672``);
on a RabbitMQ cluster it may name every node, comma-separated, and each call
tries them in turn. The vhost comes from the gateways' AMQP URL
(``amqp://…/vhost``, the first of a list), so the operator looks only at the
vhost its gateway uses.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import httpx
from prometheus_client.parser import text_string_to_metric_families

from clarion import names

from .cleanup import QueueInfo
from .pods import PodView


def vhost_of(amqp_url: str) -> str:
    """The vhost of an AMQP URL (the first of a list): the path without its slash; none is ``/``."""
    path = urlsplit(amqp_url.split(",", 1)[0].strip()).path
    return unquote(path[1:]) if len(path) > 1 else "/"


class Management:
    """RabbitMQ's management API for one broker (or one cluster): list and delete queues."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self._clients = [
            _management_client(u.strip(), timeout) for u in url.split(",") if u.strip()
        ]

    async def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        """The first answer from a node that is up; a node that is down or paused is skipped."""
        last: Exception | None = None
        for i, client in enumerate(self._clients):
            try:
                r = await client.request(method, path, **kw)
            except httpx.TransportError as exc:
                last = exc
                continue
            if r.status_code >= 500 and i < len(self._clients) - 1:
                continue
            if i:  # ask the node that answered first next time
                self._clients.insert(0, self._clients.pop(i))
            return r
        raise last or httpx.TransportError("no management URL")

    async def __aenter__(self) -> Management:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        for client in self._clients:
            await client.aclose()

    async def queues(self, vhost: str, prefix: str) -> list[QueueInfo]:
        """The vhost's queues whose name starts with ``prefix``, with their consumer counts."""
        r = await self._request(
            "GET",
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
        r = await self._request(
            "DELETE", f"/api/queues/{quote(vhost, safe='')}/{quote(name, safe='')}"
        )
        if r.status_code == 404:
            return False
        r.raise_for_status()
        return True


def _management_client(url: str, timeout: float) -> httpx.AsyncClient:
    parts = urlsplit(url)
    auth = None
    if parts.username is not None:
        auth = httpx.BasicAuth(unquote(parts.username), unquote(parts.password or ""))
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    base = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
    return httpx.AsyncClient(base_url=base, auth=auth, timeout=timeout)


class GatewayPods:
    """The gateway pods' ``/metrics`` and ``/admin/shed``, over one shared connection pool."""

    def __init__(self, timeout: float) -> None:
        self._client = httpx.AsyncClient(timeout=timeout)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def connections(self, pod: PodView) -> int | None:
        """``clarion_connections`` of one pod; None when it cannot be read (never a guess)."""
        try:
            r = await self._client.get(pod.metrics_url)
            r.raise_for_status()
            for family in text_string_to_metric_families(r.text):
                for sample in family.samples:
                    if sample.name == names.M_CONNECTIONS:
                        return int(sample.value)
        except (httpx.HTTPError, ValueError):
            return None
        return None

    async def read_all(self, pods: Mapping[str, PodView]) -> dict[str, int | None]:
        """Pod name -> its connections (None: unreadable), all pods asked at once."""
        counts = await asyncio.gather(*(self.connections(p) for p in pods.values()))
        return dict(zip(pods, counts, strict=True))

    async def shed(self, pod: PodView, count: int, token: str) -> int:
        """Ask one pod to close ``count`` sockets with 1012; how many it really closed."""
        try:
            r = await self._client.post(
                f"{pod.base_url}/admin/shed",
                json={"count": count},
                headers={"Authorization": f"Bearer {token}"},
            )
            r.raise_for_status()
            return int(r.json().get("shed", 0))
        except (httpx.HTTPError, ValueError):
            return 0

    async def shed_all(
        self, pods: Mapping[str, PodView], plan: Mapping[str, int], token: str
    ) -> dict[str, int]:
        """Every pod of the plan sheds its share at once; what each one really closed."""
        done = await asyncio.gather(*(self.shed(pods[p], n, token) for p, n in plan.items()))
        return dict(zip(plan, done, strict=True))
