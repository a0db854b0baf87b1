"""Concurrent since= replays share one history read, and each gets what it missed."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from clarion.protocol import Envelope, Target, new_message_id
from clarion.replays import EXPIRED, UNAVAILABLE, UNKNOWN, Replays

pytestmark = pytest.mark.timeout(10)


class History:
    """A stream of envelopes read by time, counting its reads (a fake of the broker's)."""

    def __init__(self, envs: list[Envelope], gate: asyncio.Event | None = None) -> None:
        self.envs = envs
        self.gate = gate
        self.reads: list[int] = []
        self.fail = False

    async def read(self, since_ms: int, each: Callable[[Envelope], object], timeout: float) -> bool:
        self.reads.append(since_ms)
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            return False
        for env in self.envs:
            if env.ts >= since_ms - 2000:
                each(env)
                each(env)  # a stream may hand a message over twice: served once
        return True

    async def start(self) -> int | None:
        return self.envs[0].ts if self.envs else None


def user(name: str) -> Callable[[Envelope], bool]:
    return lambda e: e.target.kind == "broadcast" or e.target.name == name


def stream(n: int) -> list[Envelope]:
    return [
        Envelope.create(Target("broadcast") if i % 2 else Target("user", f"u{i % 4}"), i)
        for i in range(n)
    ]


async def test_a_storm_of_replays_is_served_by_two_reads() -> None:
    envs = stream(200)
    gate = asyncio.Event()
    h = History(envs, gate)
    replays = Replays(h.read, h.start)
    first = asyncio.create_task(replays.replay(envs[10].id, user("u0")))
    await asyncio.sleep(0.01)  # the first read is under way
    storm = [
        asyncio.create_task(replays.replay(envs[20 + i].id, user(f"u{i % 4}"))) for i in range(100)
    ]
    await asyncio.sleep(0.01)
    gate.set()
    results = await asyncio.gather(first, *storm)
    assert len(h.reads) == 2  # not 101
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
    r = await replays.replay(inside, user("u0"))
    assert (r.complete, r.reason) == (False, UNKNOWN)
    older = new_message_id(envs[0].ts - 3_600_000)  # before the window's first message
    r = await replays.replay(older, user("u0"))
    assert (r.complete, r.reason) == (False, EXPIRED)
    assert r.messages == [e for e in envs if user("u0")(e)]  # what the window still has
    h.fail = True
    r = await replays.replay(envs[3].id, user("u0"))
    assert (r.complete, r.reason, r.messages) == (False, UNAVAILABLE, [])


async def test_a_cancelled_waiter_does_not_stop_the_others() -> None:
    envs = stream(20)
    gate = asyncio.Event()
    h = History(envs, gate)
    replays = Replays(h.read, h.start)
    a = asyncio.create_task(replays.replay(envs[1].id, user("u1")))
    b = asyncio.create_task(replays.replay(envs[1].id, user("u1")))
    await asyncio.sleep(0.01)
    a.cancel()  # that client went away mid-replay
    gate.set()
    assert (await b).complete
