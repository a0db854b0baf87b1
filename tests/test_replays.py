"""Concurrent since= replays share one history read, and each gets what it missed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from clarion.broker.base import At, Position
from clarion.message import Envelope, Target, new_message_id, position_id
from clarion.replays import EXPIRED, UNAVAILABLE, UNKNOWN, Replays, wanted

pytestmark = pytest.mark.timeout(10)


class History:
    """A stream of envelopes read by offset or time, counting its reads (a fake of the broker's)."""

    def __init__(self, envs: list[Envelope], gate: asyncio.Event | None = None) -> None:
        self.envs = envs
        self.gate = gate
        self.reads: list[Position | At] = []
        #: Reads that fail before one succeeds (-1: every one).
        self.fail = 0
        #: Holds the reads of what a window lacks (``until``) while it is not set.
        self.back_gate: asyncio.Event | None = None

    async def read(
        self,
        start: Position | At,
        each: Callable[[Envelope, Position], object],
        timeout: float,
        until: Position | None = None,
    ) -> Position | None:
        self.reads.append(start)
        if self.gate is not None:
            await self.gate.wait()
        if until is not None and self.back_gate is not None:
            await self.back_gate.wait()
        if self.fail:
            self.fail -= 1
            return None
        for offset, env in enumerate(self.envs):
            if until is not None and offset >= until:
                return until
            if env.ts >= start.ms - 2000 if isinstance(start, At) else offset >= start:
                each(env, offset)
                each(env, offset)  # a stream may hand a message over twice: served once
        return len(self.envs)

    async def start(self) -> int | None:
        return self.envs[0].ts if self.envs else None


U = [Target("user", f"u{i}") for i in range(4)]


def user(name: str) -> Callable[[Envelope], bool]:
    return lambda e: wanted(Target("user", name), e)


def stream(n: int, first_ts: int | None = None, step_ms: int = 10) -> list[Envelope]:
    envs = [
        Envelope.create(Target("broadcast") if i % 2 else Target("user", f"u{i % 4}"), i)
        for i in range(n)
    ]
    if first_ts is None:
        return envs
    # Spread over time, one message per step, with ids that sort by it.
    return [
        Envelope(new_message_id(first_ts + step_ms * i), e.target, first_ts + step_ms * i, e.body)
        for i, e in enumerate(envs)
    ]


async def test_a_storm_of_replays_is_served_by_two_reads() -> None:
    envs = stream(200)
    gate = asyncio.Event()
    h = History(envs, gate)
    replays = Replays(h.read, h.start)
    first = asyncio.create_task(replays.replay(envs[10].id, U[0]))
    await asyncio.sleep(0.01)  # the first read is under way
    storm = [asyncio.create_task(replays.replay(envs[20 + i].id, U[i % 4])) for i in range(100)]
    await asyncio.sleep(0.01)
    gate.set()
    results = await asyncio.gather(first, *storm)
    assert len(h.reads) == 2  # not 101
    assert replays.full_reads == 1  # the second read continued the first one's window
    assert h.reads[1] == len(envs)
    for i, r in enumerate(results[1:]):
        expected = [e for e in envs[21 + i :] if user(f"u{i % 4}")(e)]
        assert r.complete and r.messages == expected
    assert results[0].messages == [e for e in envs[11:] if user("u0")(e)]
    assert len({id(r.messages[-1]) for r in results}) == 1  # one envelope object for all


async def test_why_a_replay_is_not_complete() -> None:
    envs = stream(10)
    h = History(envs)
    replays = Replays(h.read, h.start)
    inside = new_message_id(envs[5].ts)  # a well-formed id no message has, inside the window
    r = await replays.replay(inside, U[0])
    assert (r.complete, r.reason) == (False, UNKNOWN)
    older = new_message_id(envs[0].ts - 3_600_000)  # before the window's first message
    r = await replays.replay(older, U[0])
    assert (r.complete, r.reason) == (False, EXPIRED)
    assert r.messages == [e for e in envs if user("u0")(e)]  # what the window still has
    h.fail = -1
    replays = Replays(h.read, h.start, timeout=0.3)
    r = await replays.replay(envs[3].id, U[0])
    assert (r.complete, r.reason, r.messages) == (False, UNAVAILABLE, [])
    assert len(h.reads) >= 3  # tried again until its timeout, not answered after one failure


async def test_a_cancelled_waiter_does_not_stop_the_others() -> None:
    envs = stream(20)
    gate = asyncio.Event()
    h = History(envs, gate)
    replays = Replays(h.read, h.start)
    a = asyncio.create_task(replays.replay(envs[1].id, U[1]))
    b = asyncio.create_task(replays.replay(envs[1].id, U[1]))
    await asyncio.sleep(0.01)
    a.cancel()  # that client went away mid-replay
    gate.set()
    assert (await b).complete


async def test_a_failed_read_is_tried_again_and_nothing_is_answered_unavailable() -> None:
    envs = stream(30)
    h = History(envs)
    h.fail = 2  # the broker is slow: two reads time out
    replays = Replays(h.read, h.start, timeout=10)
    r = await replays.replay(envs[4].id, U[0])
    assert r.complete and r.messages == [e for e in envs[5:] if user("u0")(e)]
    assert len(h.reads) == 3


async def test_later_replays_read_only_what_was_published_since() -> None:
    envs = stream(40)
    h = History(envs[:20])
    replays = Replays(h.read, h.start)
    first = await replays.replay(envs[2].id, U[2])
    assert first.complete
    h.envs = envs  # twenty more were published
    second = await replays.replay(envs[5].id, U[1])
    assert h.reads[1] == 20  # from where the first read ended, not from envs[5]'s time
    assert second.complete and second.messages == [e for e in envs[6:] if user("u1")(e)]
    assert replays.full_reads == 1


async def test_a_since_older_than_the_window_reads_only_what_the_window_lacks() -> None:
    now = int(time.time() * 1000)
    envs = stream(40, first_ts=now - 40_000, step_ms=1000)
    h = History(envs)
    replays = Replays(h.read, h.start)
    await replays.replay(envs[30].id, U[0])
    r = await replays.replay(envs[3].id, U[3])  # far older than the window's start
    assert r.complete and r.messages == [e for e in envs[4:] if user("u3")(e)]
    # Not read again from the start: only what the window lacked, up to its first offset.
    assert (replays.full_reads, replays.back_reads) == (1, 1)
    first_offset = next(i for i, e in enumerate(envs) if e.ts >= envs[30].ts - 2000)
    assert h.reads[1] == At(envs[3].ts)
    r = await replays.replay(envs[10].id, U[2])  # inside the window now
    assert r.complete and r.messages == [e for e in envs[11:] if user("u2")(e)]
    assert (replays.full_reads, replays.back_reads) == (1, 1)
    assert first_offset > 3


async def test_an_unused_window_is_dropped() -> None:
    envs = stream(20)
    h = History(envs)
    replays = Replays(h.read, h.start, keep=0.0)
    await replays.replay(envs[2].id, U[0])
    await asyncio.sleep(0.01)
    await replays.replay(envs[2].id, U[0])
    assert replays.full_reads == 2


async def test_a_position_replays_everything_published_from_its_time() -> None:
    now = int(time.time() * 1000)
    envs = stream(30, first_ts=now - 1_000)
    h = History(envs)
    replays = Replays(h.read, h.start)
    since = position_id(envs[10].ts)
    r = await replays.replay(since, U[2])
    assert r.complete and r.messages == [e for e in envs[10:] if user("u2")(e)]
    channel = await replays.replay(since, Target("channel", "none"))
    assert channel.complete and channel.messages == []
    before = position_id(envs[0].ts - 60_000)  # older than what the history holds
    r = await replays.replay(before, U[2])
    assert (r.complete, r.reason) == (False, EXPIRED)


async def test_a_batch_matches_each_request_its_own_target() -> None:
    envs = stream(200)
    h = History(envs)
    replays = Replays(h.read, h.start)
    targets = [*U, Target("channel", "c")]
    results = await asyncio.gather(*(replays.replay(envs[7].id, t) for t in targets))
    for t, r in zip(targets, results, strict=True):
        assert r.complete
        assert r.messages == [e for e in envs[8:] if wanted(t, e)]


async def test_a_window_reaches_as_far_back_as_replays_asked() -> None:
    # Clients idle for minutes come back with old since values: the window must keep
    # what was read for them, or every batch reads the stream again.
    now = int(time.time() * 1000)
    envs = stream(40, first_ts=now - 300_000)  # five minutes ago
    h = History(envs)
    replays = Replays(h.read, h.start)
    for i in (1, 2, 3):
        r = await replays.replay(envs[i].id, U[0])
        assert r.complete and r.messages == [e for e in envs[i + 1 :] if user("u0")(e)]
    assert replays.full_reads == 1


async def test_an_old_since_does_not_hold_up_the_others() -> None:
    now = int(time.time() * 1000)
    envs = stream(40, first_ts=now - 40_000, step_ms=1000)
    h = History(envs)
    replays = Replays(h.read, h.start)
    await replays.replay(envs[30].id, U[0])
    h.back_gate = asyncio.Event()  # what the window lacks is slow to read
    old = asyncio.create_task(replays.replay(envs[2].id, U[2]))
    fresh = await asyncio.wait_for(replays.replay(envs[33].id, U[1]), 5)
    assert fresh.complete and fresh.messages == [e for e in envs[34:] if user("u1")(e)]
    assert not old.done()
    h.back_gate.set()
    r = await asyncio.wait_for(old, 5)
    assert r.complete and r.messages == [e for e in envs[3:] if user("u2")(e)]
    assert (replays.full_reads, replays.back_reads) == (1, 1)
