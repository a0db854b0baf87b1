"""Idempotent publish: a retried publish with the same key is delivered once, cluster-wide.

With ``--routing fanout`` every pod consumes every message, so every pod learns
each key's first message id from what it consumes, with no store of its own:
- a publish whose key a pod has already seen is answered with the first id and
  not published again (a retry after a lost answer, on any pod);
- a second copy that was published anyway (a retry racing the first, or a first
  attempt whose confirm was lost after the broker had routed it) is dropped by
  every pod when it arrives, and by replays and the history API, which skip a
  key already read;
- the publishing pod waits until it has consumed its own keyed messages, so
  that a copy that lost the race is answered with the winner's id.
Keys are kept for ``--idempotency-window`` seconds (at most ``MAX_KEYS``).

With ``--routing direct`` a user or channel message reaches only the pods that
hold its target, so only they (and the publishing pod, from its own publish)
learn its key: a second copy is still delivered once (every pod that delivers
it has both copies, and replays skip the key), but a retry that lands on a
third pod is published again and answered with its own id.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict

from .message import Envelope

#: Keys remembered at most (the oldest are forgotten first).
MAX_KEYS = 200_000


class Idempotency:
    def __init__(self, window: float, max_keys: int = MAX_KEYS) -> None:
        self.window = window
        self.max_keys = max_keys
        #: key -> (the first message id, when it was consumed, monotonic)
        self._first: OrderedDict[str, tuple[str, float]] = OrderedDict()
        #: ids of this pod's keyed publishes, until it has consumed them
        self._waiting: dict[str, asyncio.Future[None]] = {}

    def lookup(self, key: str) -> str | None:
        """The first message id published with ``key`` within the window, if any."""
        entry = self._first.get(key)
        if entry is None:
            return None
        if time.monotonic() - entry[1] > self.window:
            del self._first[key]
            return None
        return entry[0]

    def consumed(self, env: Envelope) -> bool:
        """Record a consumed keyed message; False if its key came before with another id."""
        assert env.key is not None
        waiter = self._waiting.pop(env.id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        first = self.lookup(env.key)
        if first is not None:
            return first == env.id
        self._first[env.key] = (env.id, time.monotonic())
        while len(self._first) > self.max_keys:
            self._first.popitem(last=False)
        return True

    def published(self, key: str, mid: str) -> None:
        """This pod published ``mid`` with ``key`` and will not consume it (routed elsewhere).

        A key already known keeps its first id.
        """
        if self.lookup(key) is None:
            self._first[key] = (mid, time.monotonic())
            while len(self._first) > self.max_keys:
                self._first.popitem(last=False)

    def expect(self, ids: list[str]) -> list[asyncio.Future[None]]:
        """Futures resolved when this pod consumes each of its own keyed messages."""
        loop = asyncio.get_running_loop()
        futures = []
        for mid in ids:
            fut = self._waiting[mid] = loop.create_future()
            futures.append(fut)
        return futures

    async def settled(
        self, ids: list[str], futures: list[asyncio.Future[None]], timeout: float
    ) -> None:
        """Wait (bounded) until this pod consumed its own keyed messages."""
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*futures), timeout)
        finally:
            for mid in ids:
                self._waiting.pop(mid, None)
