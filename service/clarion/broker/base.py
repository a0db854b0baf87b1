"""The broker seam: one small interface, two implementations."""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..protocol import Envelope, id_timestamp_ms

#: Called for every message consumed from the pod's queue. Must not block.
Consumer = Callable[[Envelope], object]
#: Called when the broker connection goes up (True) or down (False). "Up" is
#: reported once right before the pod's queue is consumed again, so a listener
#: can act before any message that waited in the queue is delivered.
StateListener = Callable[[bool], None]


class BrokerUnavailable(RuntimeError):
    """The broker cannot take or confirm a message right now (HTTP 503)."""


@dataclass
class Replay:
    """What a reconnecting client missed, oldest first.

    ``complete`` is False when the ``since`` message is no longer in the history
    window (or the history could not be read): then ``messages`` holds what the
    window still has after ``since``'s timestamp, and the client may have lost
    something older.
    """

    messages: list[Envelope] = field(default_factory=list)
    complete: bool = True


class ReplayCollector:
    """Picks what a client missed out of history read in stream order.

    Everything after the message ``since`` that ``match`` accepts, once each.
    If ``since`` never shows up (it aged out of the window), the result is
    what the window holds from ``since``'s timestamp on, marked incomplete.
    """

    def __init__(self, since: str, match: Callable[[Envelope], bool]) -> None:
        self.since = since
        self.since_ts = id_timestamp_ms(since)
        self.match = match
        self.found = False
        self.after: list[Envelope] = []
        self.fallback: list[Envelope] = []
        self.seen: set[str] = set()

    def add(self, env: Envelope) -> None:
        if env.id in self.seen:
            return
        self.seen.add(env.id)
        if self.found:
            if self.match(env):
                self.after.append(env)
        elif env.id == self.since:
            self.found = True
        elif env.ts >= self.since_ts and self.match(env):
            self.fallback.append(env)

    def result(self) -> Replay:
        if self.found:
            return Replay(self.after, complete=True)
        return Replay(self.fallback, complete=False)


class Broker(abc.ABC):
    """Fan-out transport shared by all pods.

    ``publish`` returns only once the broker has taken responsibility for every
    message (publisher confirms), else raises BrokerUnavailable. Consumed
    messages are handed to the consumer given to ``start``.
    """

    pod_name: str
    #: Called when the pod may have missed messages it could not recover
    #: (history unreadable after a reconnect): its sockets should reconnect
    #: and recover with since= themselves.
    on_gap: Callable[[], None] | None = None

    @abc.abstractmethod
    async def start(self, consumer: Consumer, on_state: StateListener | None = None) -> None:
        """Connect, declare the topology and consume this pod's queue.

        Returns once the first connection attempt finished; keeps reconnecting
        in the background until ``stop``.
        """

    @abc.abstractmethod
    async def stop(self) -> None: ...

    @abc.abstractmethod
    async def publish(self, envelopes: Sequence[Envelope]) -> None: ...

    @abc.abstractmethod
    async def replay(
        self, since: str, match: Callable[[Envelope], bool], timeout: float = 5.0
    ) -> Replay:
        """Messages after the message ``since`` that ``match`` accepts, from history."""

    @property
    @abc.abstractmethod
    def ready(self) -> bool:
        """Connected and consuming this pod's queue."""
