"""What a subscriber hands the application: messages, recoveries, state changes, errors."""

from __future__ import annotations

import base64
import collections
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

State = Literal["disconnected", "connecting", "connected"]
#: A close code the client reports when no close frame came (network error, timeout).
LOST = 1006


class ClarionError(Exception):
    """Base of the client's errors."""


class Unauthorized(ClarionError):
    """Raised (or returned) by ``get_token`` to stop the subscriber: no token will do."""


class Closed(ClarionError):
    """The subscriber stopped for good: a terminal close code (``code``, ``reason``), a
    refused token, or ``max_retries`` failures in a row."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"closed ({code}): {reason}")
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Message:
    """A pushed message: its id (a UUIDv7: it sorts by publish time), target, data."""

    id: str
    target: dict[str, Any]
    data: Any
    ts: int | None = None

    @property
    def channel(self) -> str | None:
        channel = self.target.get("channel")
        return channel if isinstance(channel, str) else None

    def frame(self) -> dict[str, Any]:
        """The message as the server sent it."""
        frame = {"type": "message", "id": self.id, "target": self.target, "data": self.data}
        return frame if self.ts is None else {**frame, "ts": self.ts}


@dataclass(frozen=True, slots=True)
class Recovery:
    """The outcome of a (re)connection or a re-subscription: ``recovered`` True means
    every missed message was replayed (``missed`` of them); False (a *resync*) means
    something may be lost (``since`` older than the history window, or no message seen
    before the reconnect: ``since`` None), so the application should reload its state.
    ``channel`` is None for the connection (user and broadcast messages)."""

    recovered: bool
    missed: int
    since: str | None
    channel: str | None = None

    @property
    def resync(self) -> bool:
        return not self.recovered


@dataclass(frozen=True, slots=True)
class StateChange:
    """A transition; ``code`` and ``reason`` say which close caused it (0: none), ``delay``
    how long the subscriber waits before the next attempt."""

    state: State
    previous: State
    code: int = 0
    reason: str = ""
    delay: float | None = None


@dataclass(slots=True)
class _End:
    error: Closed | None = None


@dataclass(slots=True)
class _Channel:
    since: str | None = None  # the greatest id seen on it
    subscribed_once: bool = False
    pending: bool = False
    #: Its subscription token (tokens.Tokens), when the connection's rights do not cover it.
    tokens: Any = None
    #: A subscribe refused with token_expired was tried again with a new token.
    retried: bool = False
    #: Subscribed by the server (the connect proxy's backend), which subscribes it again
    #: on every connection: the client sends no subscribe for it.
    server: bool = False


class _Overflow(Exception):
    pass


GetToken = Callable[[], "str | Awaitable[str]"]


def token_expiry(token: str) -> float | None:
    """The ``exp`` of a JWT (unix seconds), read without verifying it (the server verifies;
    the client only needs to know when to refresh); None for anything else."""
    try:
        part = token.split(".")[1]
        exp = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))).get("exp")
    except (IndexError, ValueError, AttributeError):
        return None
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None


@dataclass
class _Counters:
    #: Sockets the server welcomed.
    connections: int = 0
    #: Times the queue overflowed (the subscriber dropped the socket to recover later).
    overflows: int = 0
    #: Duplicates dropped by id.
    duplicates: int = 0
    #: Calls of get_token.
    token_calls: int = 0
    #: Tokens the server took over the open socket (refresh frames answered ``refreshed``).
    refreshes: int = 0
    #: The last 100 close codes (``-1``: the subscriber's own, its queue was full).
    closes: collections.deque[int] = field(default_factory=lambda: collections.deque(maxlen=100))
