"""The embedded in-memory broker: a fanout exchange inside one process.

It gives ``clarion dev`` the same delivery semantics as RabbitMQ (every pod
sees every message) without any server to install.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..protocol import Envelope
from .base import Broker, Consumer, StateListener


class MemoryExchange:
    """The shared part: every bound pod's consumer receives every message."""

    def __init__(self) -> None:
        self._consumers: dict[str, Consumer] = {}

    def bind(self, pod_name: str, consumer: Consumer) -> None:
        if pod_name in self._consumers:
            raise ValueError(f"pod name {pod_name!r} is already bound to this exchange")
        self._consumers[pod_name] = consumer

    def unbind(self, pod_name: str) -> None:
        self._consumers.pop(pod_name, None)

    def publish(self, envelope: Envelope) -> None:
        for consumer in list(self._consumers.values()):
            consumer(envelope)


class MemoryBroker(Broker):
    def __init__(self, exchange: MemoryExchange, pod_name: str) -> None:
        self.exchange = exchange
        self.pod_name = pod_name
        self._started = False

    async def start(self, consumer: Consumer, on_state: StateListener | None = None) -> None:
        self.exchange.bind(self.pod_name, consumer)
        self._started = True
        if on_state:
            on_state(True)

    async def stop(self) -> None:
        self.exchange.unbind(self.pod_name)
        self._started = False

    async def publish(self, envelopes: Sequence[Envelope]) -> None:
        for env in envelopes:
            self.exchange.publish(env)

    @property
    def ready(self) -> bool:
        return self._started
