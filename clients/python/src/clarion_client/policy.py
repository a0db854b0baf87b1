"""What a client does after each close code, and its reconnect delays.

The same policy as the TypeScript client (clients/js/src/close-codes.ts and
backoff.ts); the server's side of the table is clarion/disconnects.py.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable
from dataclasses import dataclass


class Action(enum.Enum):
    """What to do after a close."""

    #: No reconnect, no error (a normal close).
    STOP = "stop"
    #: No reconnect, an error: retrying cannot help.
    FATAL = "fatal"
    #: Reconnect after a small random spread; the backoff does not grow.
    SOON = "soon"
    #: Reconnect with full-jitter exponential backoff.
    BACKOFF = "backoff"
    #: Like BACKOFF, with a higher minimum delay (the server is full, or we read too slowly).
    SLOW = "slow"
    #: Get a fresh token, then reconnect.
    TOKEN = "token"


@dataclass(frozen=True, slots=True)
class CloseCode:
    name: str
    action: Action


#: Every close code the Clarion server sends, with the client's action.
CLOSE_CODES: dict[int, CloseCode] = {
    1000: CloseCode("normal", Action.STOP),
    1001: CloseCode("going away (pod draining)", Action.SOON),
    1006: CloseCode("abnormal (no close frame, network error)", Action.BACKOFF),
    1008: CloseCode("policy violation", Action.FATAL),
    1009: CloseCode("message too big", Action.FATAL),
    1011: CloseCode("internal error", Action.BACKOFF),
    1012: CloseCode("service restart, rebalance or broker outage", Action.SOON),
    1013: CloseCode(
        "try again later (pod full, send buffer overflow, auth backend down)", Action.SLOW
    ),
    4001: CloseCode("token expired", Action.TOKEN),
    4002: CloseCode("session expired (connect proxy)", Action.BACKOFF),
    4500: CloseCode("unauthorized (missing or invalid token)", Action.FATAL),
    4501: CloseCode("origin not allowed", Action.FATAL),
    4502: CloseCode("disconnected by the server", Action.FATAL),
    4503: CloseCode("refused by the backend (connect proxy)", Action.FATAL),
    4504: CloseCode("too many connections for this user", Action.FATAL),
}


def close_action(code: int) -> Action:
    """The action for any code: the table, then 4000-4499 reconnect and 4500-4999 stop,
    anything else backs off."""
    known = CLOSE_CODES.get(code)
    if known is not None:
        return known.action
    if 4500 <= code <= 4999:
        return Action.FATAL
    return Action.BACKOFF


class Backoff:
    """Full-jitter exponential backoff, in seconds: after the n-th failure in a row a delay
    drawn from [0, min(max, base * 2**n)), so that clients dropped together do not come
    back together. Only a successful connection (the ``welcome`` frame) resets it."""

    def __init__(
        self,
        base: float = 0.5,
        max: float = 20.0,
        soon: float = 1.0,
        slow_min: float = 2.0,
        random: Callable[[], float] = random.random,
    ) -> None:
        self.base = base
        self.max = max
        self.soon_spread = soon
        self.slow_min = slow_min
        self.random = random
        #: Failed attempts since the last success.
        self.attempts = 0

    def _ceiling(self) -> float:
        return min(self.max, self.base * 2 ** min(self.attempts, 30))

    def next(self) -> float:
        """The delay after a failure; grows the ceiling."""
        delay = self.random() * self._ceiling()
        self.attempts += 1
        return delay

    def slow(self) -> float:
        """The delay when the server is full: at least ``slow_min``; grows the ceiling."""
        spread = max(0.0, min(self.max - self.slow_min, self._ceiling()))
        delay = self.slow_min + self.random() * spread
        self.attempts += 1
        return delay

    def soon(self) -> float:
        """A short random delay that leaves the ceiling as it is."""
        return self.random() * self.soon_spread

    def reset(self) -> None:
        self.attempts = 0


def reconnect_delay(backoff: Backoff, action: Action, *, welcomed: bool) -> float:
    """How long to wait before reconnecting after a close with ``action``.

    A socket that closed before its welcome always backs off (even after 1001,
    1012 or 4001), so that no close code can make a client storm a pod that
    accepts sockets and closes them at once.
    """
    if action is Action.SLOW:
        return backoff.slow()
    if action is Action.BACKOFF or not welcomed:
        return backoff.next()
    if action is Action.SOON:
        return backoff.soon()
    return 0.0  # TOKEN after a welcome: a fresh token, then at once
