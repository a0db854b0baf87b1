"""Batched acks: everything consumed in one event-loop iteration is acked by one basic.ack."""

from __future__ import annotations

import asyncio
from typing import Any

from aio_pika.abc import AbstractIncomingMessage


class AckBatcher:
    __slots__ = ("_channel", "_scheduled", "_tag")

    def __init__(self) -> None:
        self._tag: int | None = None
        self._channel: Any = None
        self._scheduled = False

    def ack(self, message: AbstractIncomingMessage) -> None:
        self._tag = message.delivery_tag
        self._channel = message.channel
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def forget(self) -> None:
        """The channel is gone: its delivery tags mean nothing any more."""
        self._tag = None

    def _flush(self) -> None:
        self._scheduled = False
        tag, self._tag = self._tag, None
        channel = self._channel
        if tag is None or channel is None or channel.is_closed:
            return
        fut = asyncio.ensure_future(channel.basic_ack(delivery_tag=tag, multiple=True))
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())
