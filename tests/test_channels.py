"""A channel close that the caller stops waiting for must not cost the connection.

aiormq sends a second ``Channel.Close`` when the call waiting for the first
one's answer is cancelled, and RabbitMQ closes the whole connection for it
(``CHANNEL_ERROR - expected 'channel.open'``): a pod lost its queue, its
bindings and its replays that way in the deploy benchmark. Here the broker's
answer is held back by a proxy while the closing task is cancelled.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest

from clarion.broker.channels import close_channel
from testkit.net import TcpProxy

from .support import Vhost

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def through_proxy(vhost: Vhost) -> AsyncIterator[tuple[Any, TcpProxy]]:
    proxy = await TcpProxy([5672]).start()
    url = vhost.amqp_url.replace("127.0.0.1:5672", f"127.0.0.1:{proxy.port}")
    conn = await aio_pika.connect(url)
    try:
        yield conn, proxy
    finally:
        proxy.to_client.set()
        await conn.close()
        await proxy.close()


@pytest.mark.parametrize("layer", ["aio-pika", "aiormq"])
async def test_a_close_whose_caller_is_cancelled_keeps_the_connection(
    through_proxy: tuple[Any, TcpProxy], layer: str
) -> None:
    conn, proxy = through_proxy
    ch = await conn.channel(publisher_confirms=False)
    channel = ch if layer == "aio-pika" else await ch.get_underlay_channel()
    proxy.to_client.clear()  # the broker's Close-Ok is slow to come
    closing = asyncio.ensure_future(close_channel(channel))
    await asyncio.sleep(0.3)
    closing.cancel()  # the task cleaning up is cancelled (or its wait timed out)
    proxy.to_client.set()
    # The connection lives on and opens channels as before.
    for _ in range(3):
        other = await asyncio.wait_for(conn.channel(), 5)
        await other.declare_queue(exclusive=True)
        await asyncio.sleep(0.2)
    assert not conn.is_closed
    assert channel.is_closed


async def test_a_close_waited_for_less_than_it_takes_goes_on(
    through_proxy: tuple[Any, TcpProxy],
) -> None:
    conn, proxy = through_proxy
    ch = await conn.channel(publisher_confirms=False)
    proxy.to_client.clear()
    await close_channel(ch, wait=0.2)  # returns; the close is still on its way
    proxy.to_client.set()
    other = await asyncio.wait_for(conn.channel(), 5)
    await other.declare_queue(exclusive=True)
    await asyncio.sleep(0.3)
    assert not conn.is_closed and ch.is_closed


async def test_a_close_answered_after_more_than_a_heartbeat_keeps_the_connection(
    vhost: Vhost,
) -> None:
    """aiormq waits one heartbeat interval (2 s for a pod) for a close's answer, then
    used to send a second Channel.Close: a broker that busy cost the connection."""
    from clarion.broker import channels

    assert channels.GUARDED  # the guard is engaged on this aiormq
    proxy = await TcpProxy([5672]).start()
    url = vhost.amqp_url.replace("127.0.0.1:5672", f"127.0.0.1:{proxy.port}")
    conn = await aio_pika.connect(url + "?heartbeat=2")
    try:
        ch = await conn.channel(publisher_confirms=False)
        proxy.to_client.clear()
        closing = asyncio.ensure_future(close_channel(ch, wait=10))
        await asyncio.sleep(3.0)  # longer than aiormq waits for the Close-Ok
        proxy.to_client.set()
        await closing
        for _ in range(3):
            other = await asyncio.wait_for(conn.channel(), 5)
            await other.declare_queue(exclusive=True)
            await asyncio.sleep(0.3)
        assert not conn.is_closed
    finally:
        proxy.to_client.set()
        await conn.close()
        await proxy.close()
