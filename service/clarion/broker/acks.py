"""Batched acks: one basic.ack (multiple) for up to ``EVERY`` deliveries or ``DELAY`` seconds.

A message's ack only frees its place in the prefetch window (and the broker's
memory): acking many at once costs the pod one frame instead of one per
message (docs/performance.md, "Consume path"). A lost ack only means a
redelivery, which the hub drops by id.
"""

from __future__ import annotations

import asyncio
from typing import Any

#: Deliveries acked by one frame at most (well inside the prefetch window of 1024) ...
EVERY = 128
#: ... and the longest a delivery waits for its ack, seconds.
DELAY = 0.005


class AckBatcher:
    __slots__ = ("_channel", "_count", "_tag", "_timer")

    def __init__(self) -> None:
        self._tag: int | None = None
        self._channel: Any = None
        self._count = 0
        self._timer: asyncio.TimerHandle | None = None

    def ack(self, channel: Any, delivery_tag: int) -> None:
        """Ack this delivery (and every one before it on ``channel``, an aiormq channel) soon."""
        if channel is not self._channel:
            self._flush()
            self._channel = channel
        self._tag = delivery_tag
        self._count += 1
        if self._count >= EVERY:
            self._flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(DELAY, self._flush)

    def forget(self) -> None:
        """The channel is gone: its delivery tags mean nothing any more."""
        self._tag = None
        self._count = 0

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        tag, self._tag, self._count = self._tag, None, 0
        channel = self._channel
        if tag is None or channel is None or channel.is_closed:
            return
        fut = asyncio.ensure_future(channel.basic_ack(delivery_tag=tag, multiple=True, wait=False))
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())
