"""A subscriber's token: kept, refreshed before its ``exp``, one ``get_token`` call at a time."""

from __future__ import annotations

import asyncio
import inspect
import time

from .types import ClarionError, GetToken, Unauthorized, _Counters, token_expiry


class Tokens:
    def __init__(
        self,
        token: str | None,
        get_token: GetToken | None,
        refresh_margin: float,
        stats: _Counters,
    ) -> None:
        self.get = get_token
        self.stats = stats
        self.refresh_margin = refresh_margin
        #: The token to connect with (None: get one first, or none is used).
        self.token: str | None = None
        #: When to refresh it (unix seconds); None: never (no ``exp``).
        self.refresh_at: float | None = None
        self._task: asyncio.Task[str] | None = None
        if token is not None:
            self.set(token)

    def set(self, token: str) -> None:
        """Keeps a token and when to refresh it: ``refresh_margin`` before its ``exp``, or
        half-way for a short-lived one (so that it cannot make us call get_token in a loop)."""
        self.token = token
        exp = token_expiry(token)
        now = time.time()
        self.refresh_at = (
            None if exp is None else now + max((exp - now) / 2, exp - now - self.refresh_margin)
        )

    def stale(self) -> bool:
        return self.token is None or (
            self.refresh_at is not None and time.time() >= self.refresh_at
        )

    async def refresh(self) -> str:
        """Calls ``get_token`` (one call in flight at a time: concurrent callers share it)."""
        if self.get is None:
            raise ClarionError("no get_token")
        if self._task is None:
            self._task = asyncio.ensure_future(self._call())
        task = self._task
        try:
            return await asyncio.shield(task)
        finally:
            if task.done() and self._task is task:
                self._task = None

    async def _call(self) -> str:
        assert self.get is not None
        self.stats.token_calls += 1
        result = self.get()
        token = await result if inspect.isawaitable(result) else result
        if isinstance(token, Unauthorized):
            raise token
        if not isinstance(token, str) or not token:
            raise ClarionError("get_token returned no token")
        self.set(token)
        return token

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()
