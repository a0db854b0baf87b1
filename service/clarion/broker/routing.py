"""Routed delivery (``--routing direct``): each pod's queue is bound to the keys it needs.

Every message is published to the gateway's fanout exchange with a routing key
(``routing_key``): ``u.<user>``, ``c.<channel>``, or empty for broadcasts and
commands to every pod. The fanout exchange ignores the key and gives every
message to the history stream and to whatever is bound to it:

- ``--routing fanout``: the pod queues themselves (every pod receives everything);
- ``--routing direct``: the gateway's direct exchange (``names.routed_exchange``),
  to which each pod binds its queue with the empty key (broadcasts, commands)
  and with the key of every user and channel its sockets hold.

Publishers do the same in both modes, so pods of both kinds can share a gateway
during a rolling change of the setting.

``Bindings`` keeps a pod's keys: the hub says when the first socket of a user or
channel arrives (``add``) and when the last one leaves (``discard``); a socket
is told it is connected or subscribed only once ``wait`` says the broker
confirmed the binding. Binds are pipelined: a batch is sent with ``nowait``
and closed by one synchronous bind, whose answer confirms the whole batch (a
channel applies its methods in order, and a failed bind closes the channel).
A key no longer needed is unbound after ``linger`` seconds, so a page reload
does not unbind and bind again. After a reconnect ``restore`` binds every key
before the pod consumes its queue again (and the catch-up from history covers
the outage, catchup.py).

Under a reconnect storm the broker confirms binds slowly (each is a
transaction): thousands of sockets waited for their keys, were closed 1013
after ``timeout`` and came back for the same keys (issue 19). So a pod whose
sockets wait longer than ``open_after`` for their keys *opens wide*: it binds
its queue to the fanout exchange itself (``wide``: one bind, sent at once on a
channel of its own), receives every message, and its hub delivers what its
sockets hold and drops the rest (a message that also comes through a bound key
is dropped by id, hub.py). Every waiter is released once that bind is
confirmed. The keys are still bound in the background; once none is left to
bind (and at least ``wide_for`` seconds later) the pod closes again: no waiter
is released by the wide binding from the moment it is asked to close, so every
socket is either covered by its key or waits for it. A restore of more keys
than one batch opens wide first, so a pod that lost its broker consumes again
at once instead of after binding tens of thousands of keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Iterable

import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection

from ..message import Target
from .base import BindTimeout
from .channels import close_channel

log = logging.getLogger("clarion.broker")

#: The routing key of broadcasts and commands to every pod (every pod queue binds it).
EVERYONE = ""
#: Markers (history.py) are bound by no pod queue in direct mode.
MARKER_KEY = "marker"
#: AMQP routing keys are short strings; longer names are routed by a digest.
MAX_KEY_BYTES = 255
_PREFIX = {"user": "u", "channel": "c"}


def routing_key(target: Target) -> str:
    """The routing key of a message to ``target``: what a pod that holds it binds."""
    prefix = _PREFIX.get(target.kind)
    if prefix is None or target.name is None:
        return EVERYONE
    key = f"{prefix}.{target.name}"
    if len(key.encode()) <= MAX_KEY_BYTES:
        return key
    # A digest cannot be mistaken for a name ("#" is not after the prefix of one);
    # a collision would only cost an unwanted delivery, filtered by the hub.
    return f"{prefix}#{hashlib.sha256(target.name.encode()).hexdigest()}"


class Bindings:
    """The routing keys of one pod's queue, kept in step with the keys its sockets need.

    Every operation is O(1) per key: the keys to bind and the keys lingering
    out are insertion-ordered dicts (the oldest first), so a pod holding tens of
    thousands of keys does not scan them on every connect.
    """

    def __init__(
        self,
        queue: str,
        exchange: str,
        *,
        linger: float = 2.0,
        batch: int = 1000,
        timeout: float = 10.0,
        on_confirmed: Callable[[float], None] | None = None,
        on_error: Callable[[int], None] | None = None,
        wide: str | None = None,
        open_after: float = 0.5,
        wide_for: float = 5.0,
    ) -> None:
        self.queue = queue
        self.exchange = exchange
        #: The fanout exchange the queue binds to when it opens wide (None: never).
        self.wide = wide
        self.open_after = open_after
        self.wide_for = wide_for
        #: The wide binding is confirmed (and not being closed): waiters need no key.
        self.is_wide = False
        #: When it was confirmed (monotonic); the task binding it.
        self._wide_since = 0.0
        self._opening: asyncio.Task[None] | None = None
        #: A wide binding may outlive a connection (a queue that is not exclusive).
        self._maybe_wide = False
        self.linger = linger
        self.batch = batch
        self.timeout = timeout
        self.on_confirmed = on_confirmed
        self.on_error = on_error
        #: Keys the pod's sockets need, and when each was asked for (monotonic).
        self.wanted: dict[str, float] = {}
        #: Keys bound on the current connection (or, after losing it, possibly still bound).
        self.bound: set[str] = set()
        #: Wanted, not bound, not being bound: the next batch (oldest first).
        self._to_bind: dict[str, None] = {}
        #: Bound, no longer wanted, and since when (monotonic, oldest first): unbound
        #: after ``linger``.
        self._unwanted_at: dict[str, float] = {}
        self._unbinding: set[str] = set()
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._channel: aiormq.abc.AbstractChannel | None = None
        self._pika_channel: AbstractChannel | None = None
        self._live = False
        self._conn: AbstractConnection | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self.bound)

    # -- what the hub tells -------------------------------------------------

    def add(self, key: str) -> None:
        """The first socket of a user or channel arrived: route its messages here."""
        if key in self.wanted:
            return
        self.wanted[key] = time.monotonic()
        if self._unwanted_at.pop(key, None) is None and key not in self.bound:
            self._to_bind[key] = None
            self._wake.set()

    def discard(self, key: str) -> None:
        """The last socket of a user or channel left: unbind after ``linger``."""
        if self.wanted.pop(key, None) is None:
            return
        self._to_bind.pop(key, None)
        if key in self.bound:
            self._unwanted_at[key] = time.monotonic()
            self._wake.set()
        for fut in self._waiters.pop(key, ()):
            if not fut.done():
                fut.set_result(None)

    async def wait(self, keys: Iterable[str]) -> None:
        """Until the broker confirmed every key (or the pod is not connected).

        Not connected, nothing is consumed: every wanted key is bound again before
        the pod consumes (``restore``) and the catch-up covers what was missed.
        Raises BindTimeout if the broker does not confirm within ``timeout``.
        """
        if not self._live or self.is_wide:
            return
        loop = asyncio.get_running_loop()
        futures = []
        for key in keys:
            if key not in self.wanted or (key in self.bound and key not in self._unbinding):
                continue
            fut = loop.create_future()
            self._waiters.setdefault(key, []).append(fut)
            futures.append(fut)
        if not futures:
            return
        gathered = asyncio.gather(*futures)
        try:
            async with asyncio.timeout(self.timeout):
                if self.wide is not None:
                    done, _ = await asyncio.wait({gathered}, timeout=self.open_after)
                    if not done:
                        self._open_wide()
                await gathered
        except TimeoutError:
            gathered.cancel()
            raise BindTimeout(
                f"the broker did not confirm a binding within {self.timeout}s"
            ) from None

    # -- what the broker connection does ---------------------------------------

    async def restore(self, conn: AbstractConnection) -> None:
        """On a new connection, before consuming: bind every wanted key; then keep them in step."""
        self.stop()
        channel = await self._open(conn)
        # What was bound before may still be (a queue that outlived the connection):
        # unbound at once after this, or it would keep routing here.
        stale = self.bound - self.wanted.keys()
        self.bound = set()
        self._to_bind = dict.fromkeys(self.wanted)
        began = time.monotonic()
        if self.wide is not None and len(self._to_bind) > self.batch:
            # Too many to bind before consuming: everything comes in meanwhile.
            await self._bind_wide(channel)
        elif self._maybe_wide and self.wide is not None:
            await channel.queue_unbind(self.queue, self.wide, routing_key="")
            self._maybe_wide = False
        # Until nothing is missing (unless wide): a key added while this ran must be
        # bound too before the pod consumes (the sockets asking for it were not made
        # to wait).
        while self._to_bind and not self.is_wide:
            await self._bind(channel, self._take(), observe=False)
        self.bound |= stale
        self._unwanted_at = dict.fromkeys(stale, began - self.linger)
        if self.bound:
            log.info(
                "bound %d routing keys to %s in %.2fs",
                len(self.bound),
                self.queue,
                time.monotonic() - began,
            )
        self._live = True
        self._task = asyncio.create_task(self._run(conn), name=f"bindings-{self.queue}")

    def lost(self) -> None:
        """The connection is gone: nothing is bound on the next one until ``restore``."""
        self.stop()
        waiters, self._waiters = self._waiters, {}
        for futures in waiters.values():
            for fut in futures:
                if not fut.done():
                    fut.set_result(None)

    def stop(self) -> None:
        self._live = False
        self._channel = None
        self._unbinding.clear()
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self._opening is not None:
            self._opening.cancel()
            self._opening = None
        self._set_wide(False)

    # -- opening wide ------------------------------------------------------------

    def _set_wide(self, wide: bool) -> None:
        if wide == self.is_wide:
            return
        self.is_wide = wide
        if wide:
            self._wide_since = time.monotonic()
            self._maybe_wide = True
            # Every socket waiting for a key is covered now.
            waiters, self._waiters = self._waiters, {}
            for futures in waiters.values():
                for fut in futures:
                    if not fut.done():
                        fut.set_result(None)
            self._wake.set()  # the runner closes it again once every key is bound
        log.info(
            "%s %s: %d routing keys still to bind",
            self.queue,
            "opened wide (bound to every message)" if wide else "closed again (keys only)",
            len(self._to_bind),
        )

    def _open_wide(self) -> None:
        """Bind the queue to the fanout exchange now, beside the queue of key binds."""
        if self.is_wide or not self._live or self._opening is not None:
            return
        conn = self._conn
        if conn is None:
            return

        async def open_wide() -> None:
            try:
                channel = await conn.channel(publisher_confirms=False)
                try:
                    await self._bind_wide(await channel.get_underlay_channel())
                finally:
                    await close_channel(channel)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("opening %s wide failed: %r", self.queue, exc)
            finally:
                self._opening = None

        self._opening = asyncio.create_task(open_wide(), name=f"wide-{self.queue}")

    async def _bind_wide(self, channel: aiormq.abc.AbstractChannel) -> None:
        assert self.wide is not None
        await channel.queue_bind(self.queue, self.wide, routing_key="")
        self._set_wide(True)

    async def _close_wide(self, channel: aiormq.abc.AbstractChannel) -> None:
        """Every wanted key is bound: unbind the fanout exchange (keys only again)."""
        assert self.wide is not None
        # From here on a waiter waits for its own key (none is left to bind now).
        self._set_wide(False)
        try:
            await channel.queue_unbind(self.queue, self.wide, routing_key="")
        except BaseException:
            self._maybe_wide = True  # still bound: unbound at the next restore
            raise
        self._maybe_wide = False

    async def _open(self, conn: AbstractConnection) -> aiormq.abc.AbstractChannel:
        self._conn = conn
        self._pika_channel = await conn.channel(publisher_confirms=False)
        self._channel = await self._pika_channel.get_underlay_channel()
        return self._channel

    async def _run(self, conn: AbstractConnection) -> None:
        """Bind what is wanted and unbind what lingered out, in batches, until stopped."""
        while True:
            wait = self._next_unbind_in()
            if self._maybe_wide and not self._to_bind:
                # Wide, or a wide binding whose unbind failed: close it when due.
                close_in = self._wide_since + self.wide_for - time.monotonic()
                close_in = max(0.0, close_in) if self.is_wide else 0.0
                wait = close_in if wait is None else min(wait, close_in)
            if not self._to_bind and wait != 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()
                continue
            channel = self._channel
            try:
                if channel is None or channel.is_closed:
                    channel = await self._open(conn)
                if self._to_bind:
                    await self._bind(channel, self._take())
                    # Binds come first; unbinds, which nobody waits for, a few at a time.
                    await self._unbind_due(channel, max(1, self.batch // 10))
                elif self._maybe_wide and (
                    not self.is_wide or time.monotonic() - self._wide_since >= self.wide_for
                ):
                    await self._close_wide(channel)
                else:
                    await self._unbind_due(channel, self.batch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if conn.is_closed:
                    return  # the connection's end is logged by the broker's loop
                log.warning("binding routing keys to %s failed: %r", self.queue, exc)
                if channel is not None and self._channel is channel:
                    # A failed call may leave its channel closing (the close takes a
                    # round trip): the next batch goes on a new one, not into that one.
                    self._channel = None
                    closing = asyncio.ensure_future(close_channel(channel))
                    closing.add_done_callback(lambda f: f.cancelled() or f.exception())
                await asyncio.sleep(0.5)

    def _take(self) -> list[str]:
        """The next batch of keys to bind (oldest first), taken off ``_to_bind``."""
        keys: list[str] = []
        for key in self._to_bind:
            keys.append(key)
            if len(keys) >= self.batch:
                break
        for key in keys:
            del self._to_bind[key]
        return keys

    def _next_unbind_in(self) -> float | None:
        for since in self._unwanted_at.values():  # the oldest
            return max(0.0, since + self.linger - time.monotonic())
        return None

    async def _bind(
        self, channel: aiormq.abc.AbstractChannel, keys: list[str], observe: bool = True
    ) -> None:
        """Bind a batch: all but the last without waiting, the last confirms them all.

        On failure the keys still wanted go back to be bound again. No timeout: a
        slow broker is waited for (the sockets are covered meanwhile by opening wide),
        since a call aiormq cancels closes its channel and the batch would be sent
        again to a broker already behind; a dead node ends the connection instead.
        """
        try:
            for key in keys[:-1]:
                await channel.queue_bind(self.queue, self.exchange, routing_key=key, nowait=True)
            await channel.queue_bind(self.queue, self.exchange, routing_key=keys[-1])
        except BaseException:
            if self.on_error is not None:
                self.on_error(len(keys))
            self._to_bind = {**{k: None for k in keys if k in self.wanted}, **self._to_bind}
            raise
        now = time.monotonic()
        for key in keys:
            self.bound.add(key)
            asked = self.wanted.get(key)
            if asked is None:
                # Dropped while it was being bound: it lingers out like any other.
                self._unwanted_at[key] = now
            elif observe and self.on_confirmed is not None:
                self.on_confirmed(now - asked)
        self._release(keys)

    async def _unbind_due(self, channel: aiormq.abc.AbstractChannel, limit: int) -> None:
        """Unbind up to ``limit`` keys whose linger is over (oldest first)."""
        for _ in range(limit):
            key = next(iter(self._unwanted_at), None)
            if key is None or time.monotonic() - self._unwanted_at[key] < self.linger:
                return
            del self._unwanted_at[key]
            self._unbinding.add(key)
            try:
                await channel.queue_unbind(self.queue, self.exchange, routing_key=key)
            except BaseException:
                if self.on_error is not None:
                    self.on_error(1)
                if key not in self.wanted:
                    self._unwanted_at[key] = time.monotonic()  # still bound: try again later
                raise
            finally:
                self._unbinding.discard(key)
            self.bound.discard(key)
            if key in self.wanted:
                # Wanted again while it was being unbound: bind it again.
                self._to_bind[key] = None

    def _release(self, keys: Iterable[str]) -> None:
        for key in keys:
            for fut in self._waiters.pop(key, ()):
                if not fut.done():
                    fut.set_result(None)
