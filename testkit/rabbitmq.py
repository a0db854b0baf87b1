"""The shared RabbitMQ node, and vhosts on it that keep each run's queues apart."""

from __future__ import annotations

import contextlib
import os
import uuid
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import quote

import httpx


@dataclass(frozen=True)
class Rabbit:
    """Where the node is: its AMQP address and its management API (guest/guest)."""

    host: str = "127.0.0.1"
    port: int = 5672
    mgmt_url: str = "http://127.0.0.1:15672"
    auth: tuple[str, str] = ("guest", "guest")

    @classmethod
    def from_env(cls, prefix: str) -> Rabbit:
        """``{prefix}RABBIT_HOST``, ``{prefix}RABBIT_PORT`` and ``{prefix}MGMT_URL``."""
        host = os.environ.get(f"{prefix}RABBIT_HOST", "127.0.0.1")
        return cls(
            host=host,
            port=int(os.environ.get(f"{prefix}RABBIT_PORT", "5672")),
            mgmt_url=os.environ.get(f"{prefix}MGMT_URL", f"http://{host}:15672"),
        )

    def mgmt(self) -> httpx.Client:
        return httpx.Client(base_url=self.mgmt_url, auth=self.auth, timeout=10)


class Vhost:
    """A vhost of one run (a test module, a bench system): its own exchange and queues,
    so nobody sees anybody else's, and deleting it leaves nothing behind.

    A subclass names the node and the prefix of the vhost's name."""

    rabbit: ClassVar[Rabbit] = Rabbit()
    prefix: ClassVar[str] = "clarion"

    def __init__(self, name: str | None = None) -> None:
        self.name = name or f"{self.prefix}-{uuid.uuid4().hex[:10]}"
        self.quoted = quote(self.name, safe="")

    @property
    def amqp_url(self) -> str:
        user, password = self.rabbit.auth
        return f"amqp://{user}:{password}@{self.rabbit.host}:{self.rabbit.port}/{self.quoted}"

    def create(self) -> Vhost:
        with self.rabbit.mgmt() as c:
            c.put(f"/api/vhosts/{self.quoted}").raise_for_status()
            c.put(
                f"/api/permissions/{self.quoted}/{self.rabbit.auth[0]}",
                json={"configure": ".*", "write": ".*", "read": ".*"},
            ).raise_for_status()
        return self

    def delete(self) -> None:
        with contextlib.suppress(httpx.HTTPError), self.rabbit.mgmt() as c:
            c.delete(f"/api/vhosts/{self.quoted}")

    def api(self, path: str) -> Any:
        """GET a management API path; ``{vhost}`` in it is this vhost."""
        with self.rabbit.mgmt() as c:
            r = c.get(path.replace("{vhost}", self.quoted))
            r.raise_for_status()
            return r.json()

    def queues(self) -> list[dict[str, Any]]:
        return list(self.api("/api/queues/{vhost}"))

    def consuming_queues(self) -> int:
        """How many of the vhost's queues have a consumer."""
        return sum(1 for q in self.queues() if (q.get("consumers") or 0) > 0)

    def connections(self) -> list[dict[str, Any]]:
        return [c for c in self.api("/api/connections") if c.get("vhost") == self.name]
