"""A pod admits at most --max-connects-per-second new sockets: a storm is spread, not absorbed.

When a pod drains or dies its clients come back at once; the pods taking them
admit a bounded rate and ask the rest to come back later (1013, which both
client libraries follow with a backoff), counted in
``clarion_limit_hits_total{limit="connect_rate"}``.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from clarion.config import Settings

from .support import InProcessPod, wait_for
from .wsclient import Client

pytestmark = pytest.mark.timeout(30)


async def test_a_connect_storm_beyond_the_rate_is_asked_to_come_back_later() -> None:
    async with InProcessPod(auth="none", max_connects_per_second=5) as pod:
        # The bucket holds a burst of twice the rate: 10 get in, the rest are refused.
        clients = await asyncio.gather(
            *(Client.connect(f"{pod.ws_url}?user=s{i}") for i in range(30))
        )
        for c in clients:
            await c.until(lambda c=c: c.closed or c.of_type("welcome"), 10, "welcome or close")
        codes = [c.close_code for c in clients if c.closed]
        assert len(codes) >= 15 and set(codes) == {1013}, codes
        assert {c.close_reason for c in clients if c.closed} == {"pod busy: try again later"}
        assert all(not c.of_type("welcome") for c in clients if c.closed)
        assert pod.metric("clarion_limit_hits_total", {"limit": "connect_rate"}) == len(codes)
        assert pod.metric("clarion_connections_closed_total", {"reason": "admission"}) == len(codes)
        for c in clients:
            await c.close()

        # A client that backs off gets in: the limit is a rate, not a wall.
        async def admitted() -> bool:
            client = await Client.connect(f"{pod.ws_url}?user=late-{uuid.uuid4().hex[:4]}")
            try:
                await client.wait_welcome(2)
                return True
            except Exception:
                return False
            finally:
                await client.close()

        await wait_for(admitted, 10, 0.3, message="a later connect admitted")


async def test_no_limit_admits_a_storm() -> None:
    async with InProcessPod(auth="none", max_connects_per_second=0) as pod:
        clients = await asyncio.gather(
            *(Client.connect(f"{pod.ws_url}?user=n{i}") for i in range(40))
        )
        for c in clients:
            await c.wait_welcome()
            await c.close()
        assert pod.metric("clarion_limit_hits_total", {"limit": "connect_rate"}) == 0


@pytest.mark.parametrize("rate", [-1.0, -0.001])
def test_a_negative_rate_is_refused_at_start(rate: float) -> None:
    with pytest.raises(ValueError, match="max-connects-per-second"):
        Settings(pod_name="p", auth="none", max_connects_per_second=rate).validate()
