"""idempotency.py: each publish key's first message id, learnt from what a pod consumes
(or publishes), kept for ``window`` seconds and at most ``max_keys`` keys; a pod's wait
for its own keyed messages.

The end-to-end behaviour across pods is tests/test_idempotency.py; here the record
itself, on a real event loop and the real monotonic clock.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from clarion.idempotency import MAX_KEYS, Idempotency
from clarion.message import Envelope, Target

pytestmark = pytest.mark.timeout(10)


def keyed(key: str, mid: str) -> Envelope:
    return Envelope(id=mid, target=Target("user", "u"), ts=0, body=b"{}", key=key)


def test_an_unknown_key_has_no_first_id() -> None:
    assert Idempotency(60).lookup("k") is None


def test_the_first_consumed_id_wins_and_a_second_copy_is_a_duplicate() -> None:
    idem = Idempotency(60)
    assert idem.consumed(keyed("k", "a")) is True
    assert idem.lookup("k") == "a"
    assert idem.consumed(keyed("k", "b")) is False  # another message with the key: dropped
    assert idem.lookup("k") == "a"
    assert idem.consumed(keyed("k", "a")) is True  # a redelivery of the first is not a duplicate


def test_keys_are_independent() -> None:
    idem = Idempotency(60)
    assert idem.consumed(keyed("k1", "a"))
    assert idem.consumed(keyed("k2", "b"))
    assert (idem.lookup("k1"), idem.lookup("k2")) == ("a", "b")


def test_a_published_key_is_known_and_keeps_its_first_id() -> None:
    idem = Idempotency(60)
    idem.published("k", "a")
    assert idem.lookup("k") == "a"
    idem.published("k", "b")  # a retry published anyway
    assert idem.lookup("k") == "a"
    assert idem.consumed(keyed("k", "b")) is False


def test_a_consumed_key_is_not_replaced_by_a_later_publish() -> None:
    idem = Idempotency(60)
    idem.consumed(keyed("k", "a"))
    idem.published("k", "b")
    assert idem.lookup("k") == "a"


def test_a_key_is_forgotten_after_the_window_and_not_before() -> None:
    window = 0.2
    idem = Idempotency(window)
    t0 = time.monotonic()
    idem.consumed(keyed("k", "a"))
    first = idem.lookup("k")
    if time.monotonic() - t0 < window:  # (a paused machine may skip this check)
        assert first == "a"
    time.sleep(window * 1.5)
    assert idem.lookup("k") is None
    # After the window the key starts over: the next message with it is a first.
    assert idem.consumed(keyed("k", "b")) is True
    assert idem.lookup("k") == "b"


def test_the_oldest_keys_go_first_beyond_max_keys() -> None:
    assert MAX_KEYS == 200_000
    idem = Idempotency(60, max_keys=3)
    for i in range(3):
        idem.consumed(keyed(f"k{i}", f"m{i}"))
    assert [idem.lookup(f"k{i}") for i in range(3)] == ["m0", "m1", "m2"]  # at the limit
    idem.published("k3", "m3")  # one over: k0 goes
    assert [idem.lookup(f"k{i}") for i in range(4)] == [None, "m1", "m2", "m3"]
    idem.consumed(keyed("k4", "m4"))
    assert idem.lookup("k1") is None and idem.lookup("k4") == "m4"


def test_max_keys_one_keeps_the_last_key() -> None:
    idem = Idempotency(60, max_keys=1)
    idem.consumed(keyed("a", "1"))
    idem.consumed(keyed("b", "2"))
    assert (idem.lookup("a"), idem.lookup("b")) == (None, "2")


async def test_a_pod_waits_until_it_consumed_its_own_keyed_messages() -> None:
    idem = Idempotency(60)
    ids = ["a", "b"]
    futures = idem.expect(ids)
    waiting = asyncio.create_task(idem.settled(ids, futures, timeout=5))
    await asyncio.sleep(0)
    idem.consumed(keyed("k1", "a"))
    await asyncio.sleep(0)
    assert not waiting.done()  # one of two
    t0 = time.monotonic()
    idem.consumed(keyed("k2", "b"))
    await waiting
    assert time.monotonic() - t0 < 1
    assert idem._waiting == {}


async def test_the_wait_is_bounded_and_forgets_what_never_came() -> None:
    idem = Idempotency(60)
    futures = idem.expect(["a"])
    t0 = time.monotonic()
    await idem.settled(["a"], futures, timeout=0.05)  # no exception: it just stops waiting
    assert 0.05 <= time.monotonic() - t0 < 2
    assert idem._waiting == {}
    # A late copy is still recorded as the key's first.
    assert idem.consumed(keyed("k", "a")) is True and idem.lookup("k") == "a"


async def test_a_cancelled_wait_forgets_its_ids() -> None:
    idem = Idempotency(60)
    futures = idem.expect(["a", "b"])
    waiting = asyncio.create_task(idem.settled(["a", "b"], futures, timeout=5))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert idem._waiting == {}
