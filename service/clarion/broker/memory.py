"""The embedded in-memory broker: a fanout exchange inside one process.

It gives ``clarion dev`` the same delivery semantics as RabbitMQ (every pod
sees every message, and a bounded history serves ``since`` recovery) without
any server to install.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence

from ..message import Envelope
from .base import At, Broker, BrokerListener, Position

#: Like the stream's reader, start a little early; readers skip by id.
EARLY_MS = 2000


class MemoryExchange:
    """The shared part: every bound pod's consumer receives every message."""

    def __init__(self, history_max_messages: int = 10_000, history_max_age: float = 3600) -> None:
        self._consumers: dict[str, Callable[[Envelope], object]] = {}
        self.history: deque[Envelope] = deque(maxlen=history_max_messages)
        self.history_max_age = history_max_age
        #: Messages ever kept in the history: the offset after the newest one.
        self.end = 0

    def bind(self, pod_name: str, consumer: Callable[[Envelope], object]) -> None:
        if pod_name in self._consumers:
            raise ValueError(f"pod name {pod_name!r} is already bound to this exchange")
        self._consumers[pod_name] = consumer

    def unbind(self, pod_name: str) -> None:
        self._consumers.pop(pod_name, None)

    def send(self, pod_name: str, envelope: Envelope) -> None:
        """To one pod alone, not kept in the history (a reply)."""
        consumer = self._consumers.get(pod_name)
        if consumer is not None:
            consumer(envelope)

    def publish(self, envelope: Envelope) -> None:
        self.history.append(envelope)
        self.end += 1
        horizon = (time.time() - self.history_max_age) * 1000
        while self.history and self.history[0].ts < horizon:
            self.history.popleft()
        for consumer in list(self._consumers.values()):
            consumer(envelope)

    def read(
        self,
        start: Position | At,
        each: Callable[[Envelope, Position], object],
        until: Position | None = None,
    ) -> Position:
        """Hand over the history from ``start`` on (up to ``until``), with offsets; the
        offset after what was handed over."""
        first = self.end - len(self.history)
        for i, env in enumerate(list(self.history)):
            offset = first + i
            if until is not None and offset >= until:
                return until
            if isinstance(start, At):
                if env.ts >= start.ms - EARLY_MS:
                    each(env, offset)
            elif offset >= start:
                each(env, offset)
        return self.end


class MemoryBroker(Broker):
    def __init__(self, exchange: MemoryExchange, pod_name: str) -> None:
        self.exchange = exchange
        self.pod_name = pod_name
        self._started = False

    async def start(self, listener: BrokerListener) -> None:
        self.exchange.bind(self.pod_name, listener.on_message)
        self._started = True
        listener.on_state(True)

    async def stop(self) -> None:
        self.exchange.unbind(self.pod_name)
        self._started = False

    async def publish(self, envelopes: Sequence[Envelope], to_pod: str | None = None) -> None:
        for env in envelopes:
            if to_pod is None:
                self.exchange.publish(env)
            else:
                self.exchange.send(to_pod, env)

    async def read_stream(
        self,
        start: Position | At,
        each: Callable[[Envelope, Position], object],
        timeout: float,
        until: Position | None = None,
    ) -> Position | None:
        return self.exchange.read(start, each, until)

    async def history_start(self) -> int | None:
        history = self.exchange.history
        if len(history) == self.exchange.end:
            return None  # nothing dropped yet
        return history[0].ts if history else int(time.time() * 1000)

    @property
    def ready(self) -> bool:
        return self._started
