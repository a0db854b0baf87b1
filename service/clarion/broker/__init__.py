"""Broker backends, chosen by URL scheme (after encode/broadcaster).

``memory://`` (or no URL) is the embedded in-process broker; ``amqp://`` and
``amqps://`` are RabbitMQ.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from .base import BindTimeout, Broker, BrokerListener, BrokerOptions, BrokerUnavailable
from .memory import MemoryBroker, MemoryExchange

__all__ = [
    "BindTimeout",
    "Broker",
    "BrokerListener",
    "BrokerOptions",
    "BrokerUnavailable",
    "MemoryBroker",
    "MemoryExchange",
    "create_broker",
]


def create_broker(
    url: str | None,
    pod_name: str,
    *,
    options: BrokerOptions,
    memory_exchange: MemoryExchange | None = None,
) -> Broker:
    """The backend for ``url``; ``memory_exchange`` is shared by in-process pods."""
    scheme = urlsplit(url).scheme if url else "memory"
    if scheme == "memory":
        return MemoryBroker(memory_exchange or MemoryExchange(), pod_name)
    if scheme in ("amqp", "amqps"):
        from .rabbitmq import RabbitBroker

        assert url is not None
        return RabbitBroker(url, pod_name, options)
    raise ValueError(
        f"unsupported broker URL scheme {scheme!r} (use amqp://, amqps:// or memory://)"
    )
