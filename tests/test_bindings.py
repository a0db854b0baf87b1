"""routing.Bindings on a real RabbitMQ: whatever the order of arrivals and departures, the
queue ends up bound to exactly the keys still wanted, and a waiter is released only once
its key is really bound."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import aio_pika
import pytest

from clarion.broker.routing import Bindings, routing_key
from clarion.message import Target

from .support import Vhost, wait_for

pytestmark = pytest.mark.timeout(60)

EXCHANGE = "bindings-test.routed"
QUEUE = "bindings-test.q"


@pytest.fixture
async def setup(vhost: Vhost) -> AsyncIterator[tuple[Any, Bindings, Vhost]]:
    conn = await aio_pika.connect(vhost.amqp_url)
    ch = await conn.channel()
    await ch.declare_exchange(EXCHANGE, aio_pika.ExchangeType.DIRECT)
    await ch.declare_queue(QUEUE, exclusive=True)
    bindings = Bindings(QUEUE, EXCHANGE, linger=0.2, batch=50)
    await bindings.restore(conn)
    try:
        yield conn, bindings, vhost
    finally:
        bindings.stop()
        await conn.close()


def bound_keys(vhost: Vhost, exchange: str = EXCHANGE, queue: str = QUEUE) -> set[str]:
    path = f"/api/bindings/{{vhost}}/e/{exchange}/q/{quote(queue, safe='')}"
    return {b["routing_key"] for b in vhost.api(path)}


async def test_churn_converges_to_what_is_wanted(setup: Any) -> None:
    _conn, bindings, vhost = setup
    rng = random.Random(7)
    keys = [f"u.k{i}" for i in range(120)]
    wanted: set[str] = set()
    for step in range(2000):
        key = rng.choice(keys)
        if key in wanted:
            bindings.discard(key)
            wanted.discard(key)
        else:
            bindings.add(key)
            wanted.add(key)
        if step % 7 == 0:
            await asyncio.sleep(0)  # let batches start and finish in between
        if step % 97 == 0:
            await asyncio.sleep(0.01)
    await bindings.wait(wanted)
    await wait_for(lambda: bound_keys(vhost) == wanted, 15, 0.2, message="bindings = wanted")
    assert bindings.bound == wanted


async def test_keys_dropped_while_their_bind_is_on_its_way_are_unbound(setup: Any) -> None:
    _conn, bindings, vhost = setup
    keys = [f"u.gone{i}" for i in range(40)]
    for key in keys:
        bindings.add(key)
    # Let the batch go out (no-wait binds, then the confirming one), then drop them all
    # before the broker's answer is read.
    await wait_for(lambda: not bindings._to_bind, 5, 0, message="batch sent")
    assert not bindings.bound & set(keys)
    for key in keys:
        bindings.discard(key)
    # One batch at a time: once a later key is bound, that batch is answered too.
    bindings.add("u.later")
    await bindings.wait(["u.later"])
    await wait_for(lambda: not bindings.bound & set(keys), 10, 0.05, message="all unbound")
    await wait_for(lambda: not bound_keys(vhost) & set(keys), 10, 0.2, message="API agrees")


async def test_a_waiter_is_released_only_once_its_key_is_bound(setup: Any) -> None:
    _conn, bindings, vhost = setup
    keys = [f"c.w{i}" for i in range(300)]
    for key in keys:
        bindings.add(key)
    await bindings.wait(keys)
    assert set(keys) <= bound_keys(vhost)


async def test_a_key_wanted_again_while_it_is_unbound_is_bound_again(setup: Any) -> None:
    _conn, bindings, vhost = setup
    bindings.add("u.again")
    await bindings.wait(["u.again"])
    # Want the key back while its unbind is on its way to the broker (the real call,
    # only observed: the event is set just before it is sent).
    channel = bindings._channel
    assert channel is not None
    sent = asyncio.Event()
    unbind = channel.queue_unbind

    async def observed(*args: Any, **kw: Any) -> Any:
        sent.set()
        return await unbind(*args, **kw)

    channel.queue_unbind = observed  # type: ignore[method-assign]
    bindings.discard("u.again")
    await asyncio.wait_for(sent.wait(), 5)  # after the linger
    assert "u.again" in bindings._unbinding
    bindings.add("u.again")
    await bindings.wait(["u.again"])
    # Released only once bound again, not while the unbind was still on its way.
    assert "u.again" in bindings.bound and "u.again" not in bindings._unbinding
    assert "u.again" in bound_keys(vhost)
    await asyncio.sleep(0.5)  # longer than the linger: nothing may unbind it now
    assert "u.again" in bound_keys(vhost)


async def test_restore_binds_everything_before_it_returns(vhost: Vhost) -> None:
    """A new connection (the exclusive queue and its bindings are gone): restore binds all."""
    bindings = Bindings(QUEUE, EXCHANGE, linger=0.2, batch=64)
    keys = [f"u.r{i}" for i in range(500)]
    for key in keys:
        bindings.add(key)
    for _ in range(2):
        conn = await aio_pika.connect(vhost.amqp_url)
        try:
            ch = await conn.channel()
            await ch.declare_exchange(EXCHANGE, aio_pika.ExchangeType.DIRECT)
            await ch.declare_queue(QUEUE, exclusive=True)
            await bindings.restore(conn)
            assert bound_keys(vhost) == set(keys)
            bindings.lost()
        finally:
            await conn.close()


@pytest.mark.parametrize(
    ("target", "key"),
    [
        (Target("user", "alice"), "u.alice"),
        (Target("channel", "news"), "c.news"),
        (Target("broadcast"), ""),
        (Target("user", "a" * 253), "u." + "a" * 253),
    ],
)
def test_routing_keys(target: Target, key: str) -> None:
    assert routing_key(target) == key


@pytest.mark.parametrize("name", ["a" * 254, "ü" * 127, "é" * 300, "x" * 10_000])
def test_long_names_are_routed_by_a_digest_that_fits(name: str) -> None:
    key = routing_key(Target("user", name))
    assert key.startswith("u#") and len(key.encode()) <= 255
    assert routing_key(Target("channel", name)) != key


FANOUT = "bindings-test.fanout"
ROUTED = "bindings-test.wide-routed"
WIDE_QUEUE = "bindings-test.wide-q"


@pytest.fixture
async def wide_setup(vhost: Vhost) -> AsyncIterator[tuple[Any, Any, Vhost]]:
    """The gateway's topology in small: fanout → direct → queue by key (routing.py)."""
    conn = await aio_pika.connect(vhost.amqp_url)
    ch = await conn.channel()
    fanout = await ch.declare_exchange(FANOUT, aio_pika.ExchangeType.FANOUT)
    routed = await ch.declare_exchange(ROUTED, aio_pika.ExchangeType.DIRECT)
    await routed.bind(fanout)
    queue = await ch.declare_queue(WIDE_QUEUE, exclusive=True)
    try:
        yield conn, fanout, queue
    finally:
        await conn.close()


def wide_bound(vhost: Vhost) -> set[str]:
    return bound_keys(vhost, ROUTED, WIDE_QUEUE)


def fanout_bound(vhost: Vhost) -> bool:
    return bool(bound_keys(vhost, FANOUT, WIDE_QUEUE))


def wide_bindings(batch: int) -> Bindings:
    """A pod's bindings that open wide quickly and close again soon after."""
    return Bindings(
        WIDE_QUEUE, ROUTED, linger=0.2, batch=batch, wide=FANOUT, open_after=0.2, wide_for=0.5
    )


async def received(queue: Any, fanout: Any, keys: list[str]) -> set[str]:
    """Publish one message per key to the fanout exchange; the keys that reached the queue."""
    for key in keys:
        await fanout.publish(aio_pika.Message(key.encode()), routing_key=key)
    got: set[str] = set()
    deadline = asyncio.get_running_loop().time() + 2.0
    while asyncio.get_running_loop().time() < deadline and got != set(keys):
        msg = await queue.get(fail=False)
        if msg is None:
            await asyncio.sleep(0.05)
            continue
        await msg.ack()
        got.add(msg.body.decode())
    return got


async def test_a_pod_whose_keys_bind_slowly_opens_wide_then_closes_with_every_key_bound(
    wide_setup: Any, vhost: Vhost
) -> None:
    conn, fanout, queue = wide_setup
    bindings = wide_bindings(50)
    await bindings.restore(conn)
    try:
        # The broker is slow to confirm binds (a reconnect storm): the runner's real
        # binds are held back until released.
        release = asyncio.Event()
        channel = bindings._channel
        assert channel is not None
        bind = channel.queue_bind

        async def held(*args: Any, **kw: Any) -> Any:
            await release.wait()
            return await bind(*args, **kw)

        channel.queue_bind = held  # type: ignore[method-assign]
        keys = [f"u.slow{i}" for i in range(120)]
        for key in keys:
            bindings.add(key)
        # Released by the wide binding, long before the bind timeout.
        await asyncio.wait_for(bindings.wait(keys), 3)
        assert bindings.is_wide and fanout_bound(vhost)
        assert not wide_bound(vhost) & set(keys)
        # Every message reaches the queue now, wanted or not (the hub filters).
        assert await received(queue, fanout, ["u.slow3", "u.nobody"]) == {"u.slow3", "u.nobody"}

        release.set()
        await wait_for(lambda: not bindings.is_wide, 10, 0.05, message="closed again")
        assert set(keys) <= wide_bound(vhost)
        await wait_for(lambda: not fanout_bound(vhost), 5, 0.1, message="fanout unbound")
        # Keys only again: a wanted key's message arrives, another one does not.
        assert await received(queue, fanout, ["u.slow7", "u.nobody"]) == {"u.slow7"}
        # A socket arriving now waits for its own key (nothing wide releases it).
        bindings.add("u.late")
        await asyncio.wait_for(bindings.wait(["u.late"]), 5)
        assert "u.late" in wide_bound(vhost)
    finally:
        bindings.stop()


async def test_restoring_more_keys_than_a_batch_consumes_at_once_wide(
    wide_setup: Any, vhost: Vhost
) -> None:
    """After a reconnect a pod with thousands of keys does not bind them all first."""
    conn, fanout, queue = wide_setup
    bindings = wide_bindings(64)
    keys = [f"u.r{i}" for i in range(500)]
    for key in keys:
        bindings.add(key)
    await bindings.restore(conn)
    try:
        # Consuming before the keys are bound: they are bound in the background.
        assert bindings.is_wide and fanout_bound(vhost)
        assert await received(queue, fanout, ["u.r499"]) == {"u.r499"}
        await wait_for(lambda: not bindings.is_wide, 15, 0.05, message="closed again")
        assert wide_bound(vhost) == set(keys)
        await wait_for(lambda: not fanout_bound(vhost), 5, 0.1, message="fanout unbound")
        assert await received(queue, fanout, ["u.r1", "u.other"]) == {"u.r1"}
    finally:
        bindings.stop()
