"""A user who keeps reconnecting on their own, as docs/failure-modes.md's recovery recipe says.

``tests.wsclient.User`` is one user across reconnects that a test drives by
hand; ``Recovering`` drives it itself, the way a browser tab does through a
deploy: on any close it waits a random 0-1 s (after 1011 or 1013 at least 2 s,
randomised, doubling up to about 10 s), picks a random pod among those the load
balancer currently offers, and reconnects with ``since=<greatest id received>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from typing import Any

import websockets

from .wsclient import User

#: Close codes after which the recipe backs off.
BACK_OFF = (1011, 1013)
#: The close code recorded when the client gave up waiting for a welcome.
GAVE_UP = -1


class Recovering:
    """One user that reconnects by the recipe until ``stop()``."""

    def __init__(
        self, name: str, live: Callable[[], list[str]], rng: random.Random, timeout: float = 15
    ) -> None:
        self.user = User(name)
        self.live = live  # the WebSocket URLs the load balancer offers now
        self.rng = rng
        self.timeout = timeout  # no welcome within it: the attempt failed
        self.close_codes: list[int | None] = []  # None: it never opened (refused, no 101)
        self.connected = asyncio.Event()
        self.waits: list[float] = []  # attempt -> welcome, seconds, of each welcomed attempt
        self.gaps: list[float] = []  # close -> next welcome, seconds (retries included)
        self._down_since: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def welcomes(self) -> list[dict[str, Any]]:
        return self.user.welcomes

    def start(self, first_url: str) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(first_url))

    async def _run(self, url: str) -> None:
        backoff = 0
        while not self._stopping:
            code = await self._session(url)
            self.close_codes.append(code)
            if self._stopping:
                return
            if code in BACK_OFF:
                base = min(10.0, 2.0 * 2**backoff)
                backoff += 1
                await asyncio.sleep(base * self.rng.uniform(1.0, 1.5))
            else:
                await asyncio.sleep(self.rng.uniform(0.0, 1.0))
            url = self.rng.choice(self.live())

    async def _session(self, url: str) -> int | None:
        """One connection, until it closes; its close code (None: it never opened)."""
        before = self.user.client
        start = time.monotonic()
        try:
            client = await self.user.connect(url, self.timeout)
        except (OSError, TimeoutError, websockets.WebSocketException):
            return None
        except AssertionError:  # closed, or no welcome in time
            failed = self.user.client
            if failed is None or failed is before:
                return None
            code = failed.close_code if failed.closed else GAVE_UP
            await failed.close()
            return code
        now = time.monotonic()
        self.waits.append(now - start)
        if self._down_since is not None:
            self.gaps.append(now - self._down_since)
        self.connected.set()
        await client.wait_closed(timeout=1e9)
        self._down_since = time.monotonic()
        self.connected.clear()
        self.user.drain()
        return client.close_code

    def drain(self) -> list[str]:
        """Every message id received so far, duplicates included."""
        self.user.drain()
        return self.user.ids

    async def stop(self) -> None:
        self._stopping = True
        await self.user.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
