"""broker/acks.py: one ``basic.ack(multiple)`` per ``EVERY`` deliveries or ``DELAY`` seconds.

A real event loop drives the batcher; the channel is a stand-in that records the acks
it is sent, as aiormq's channel would put them on the wire.
"""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

import pytest

from clarion.broker.acks import DELAY, EVERY, AckBatcher

pytestmark = pytest.mark.timeout(10)


class Channel:
    """What AckBatcher needs of an aiormq channel: ``is_closed`` and ``basic_ack``."""

    def __init__(self, fail: bool = False) -> None:
        self.is_closed = False
        self.fail = fail
        #: (delivery tag, multiple, wait, monotonic time)
        self.acks: list[tuple[int, bool, bool, float]] = []

    async def basic_ack(self, delivery_tag: int, multiple: bool, wait: bool) -> None:
        self.acks.append((delivery_tag, multiple, wait, time.monotonic()))
        if self.fail:
            raise ConnectionError("the channel went away under the ack")

    @property
    def tags(self) -> list[int]:
        return [a[0] for a in self.acks]


async def settle(seconds: float = 0.0) -> None:
    """Let the acks the batcher scheduled run (and ``seconds`` pass)."""
    await asyncio.sleep(seconds)
    for _ in range(3):
        await asyncio.sleep(0)


async def until(predicate: Any, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.001)


def test_the_batch_fits_in_the_prefetch_window_and_the_delay_is_short() -> None:
    assert 1 < EVERY <= 1024  # rabbitmq.py's prefetch
    assert 0 < DELAY <= 0.05


async def test_one_delivery_is_acked_after_the_delay_alone() -> None:
    ch, batcher = Channel(), AckBatcher()
    t0 = time.monotonic()
    batcher.ack(ch, 1)
    await until(lambda: ch.acks)
    tag, multiple, wait, at = ch.acks[0]
    assert (tag, multiple, wait) == (1, True, False)
    assert at - t0 >= DELAY * 0.95  # not at once: it waited for company
    await settle(DELAY * 3)
    assert ch.tags == [1]  # and only once


async def test_one_short_of_a_batch_waits_for_the_delay_then_acks_the_last_tag() -> None:
    ch, batcher = Channel(), AckBatcher()
    t0 = time.monotonic()
    for tag in range(1, EVERY):
        batcher.ack(ch, tag)
    await until(lambda: ch.acks)
    await settle(DELAY * 3)
    assert ch.tags == [EVERY - 1]
    assert ch.acks[0][3] - t0 >= DELAY * 0.95


async def test_a_full_batch_is_acked_at_once_and_its_timer_is_dropped() -> None:
    ch, batcher = Channel(), AckBatcher()
    for tag in range(1, EVERY + 1):
        batcher.ack(ch, tag)
    await settle()
    assert ch.tags == [EVERY]
    await settle(DELAY * 3)
    assert ch.tags == [EVERY]  # no second, empty ack when the delay would have run out


async def test_one_past_a_batch_acks_the_batch_now_and_the_rest_after_the_delay() -> None:
    ch, batcher = Channel(), AckBatcher()
    for tag in range(1, EVERY + 1):
        batcher.ack(ch, tag)
    t0 = time.monotonic()
    batcher.ack(ch, EVERY + 1)
    await until(lambda: len(ch.acks) == 2)
    assert ch.tags == [EVERY, EVERY + 1]
    assert ch.acks[0][3] < ch.acks[1][3] and ch.acks[1][3] - t0 >= DELAY * 0.95


async def test_many_batches_ack_in_order_with_one_frame_per_batch() -> None:
    ch, batcher = Channel(), AckBatcher()
    n = EVERY * 3 + 7
    for tag in range(1, n + 1):
        batcher.ack(ch, tag)
    await until(lambda: ch.tags[-1:] == [n])
    assert ch.tags == [EVERY, EVERY * 2, EVERY * 3, n]


async def test_a_new_channel_flushes_the_old_ones_tags_to_the_old_channel() -> None:
    old, new, batcher = Channel(), Channel(), AckBatcher()
    batcher.ack(old, 5)
    batcher.ack(old, 6)
    t0 = time.monotonic()
    batcher.ack(new, 1)  # delivery tags restart on a new channel
    await until(lambda: new.acks)
    await settle(DELAY * 3)
    assert (old.tags, new.tags) == ([6], [1])
    assert old.acks[0][3] < new.acks[0][3] and new.acks[0][3] - t0 >= DELAY * 0.95


async def test_forgotten_tags_are_never_acked_but_later_ones_are() -> None:
    ch, batcher = Channel(), AckBatcher()
    batcher.ack(ch, 1)
    batcher.ack(ch, 2)
    batcher.forget()  # the channel is gone: its tags mean nothing any more
    await settle(DELAY * 3)
    assert ch.acks == []
    fresh = Channel()
    batcher.ack(fresh, 1)
    await until(lambda: fresh.acks)
    assert fresh.tags == [1] and ch.acks == []


async def test_forget_resets_the_batch_count() -> None:
    ch, batcher = Channel(), AckBatcher()
    for tag in range(1, EVERY):
        batcher.ack(ch, tag)
    batcher.forget()
    t0 = time.monotonic()
    batcher.ack(ch, 1)  # the first of a new count, not the EVERY-th: it waits
    await until(lambda: ch.acks)
    assert ch.tags == [1] and ch.acks[0][3] - t0 >= DELAY * 0.95


async def test_a_closed_channel_is_not_acked() -> None:
    ch, batcher = Channel(), AckBatcher()
    for tag in range(1, EVERY):
        batcher.ack(ch, tag)
    ch.is_closed = True
    batcher.ack(ch, EVERY)  # the batch is full, but the channel closed
    await settle(DELAY * 3)
    assert ch.acks == []


async def test_a_failing_ack_is_swallowed_without_a_loop_error() -> None:
    loop_errors: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _, ctx: loop_errors.append(ctx))
    ch, batcher = Channel(fail=True), AckBatcher()
    for tag in range(1, EVERY + 1):
        batcher.ack(ch, tag)
    await settle()
    assert ch.tags == [EVERY]
    batcher.ack(ch, EVERY + 1)  # the batcher goes on
    await until(lambda: len(ch.acks) == 2)
    await settle()
    gc.collect()  # an unread task exception is reported when the task is collected
    await settle()
    assert loop_errors == []
