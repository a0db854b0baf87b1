"""The Subscriber against a scripted WebSocket server that closes with every code: the
reconnect delays, token refresh single-flight, and the recovery bookkeeping (since,
re-subscription, duplicates, resync, a slow consumer)."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest
from fakes import (
    FakeGateway,
    Recorder,
    claims,
    collect,
    ids,
    msg,
    refusing_port,
    then_close,
    token,
    wait_for,
    welcome,
)
from websockets.asyncio.server import ServerConnection

from clarion_client import Closed, Message, Recovery, StateChange, Subscriber, Unauthorized

pytestmark = pytest.mark.timeout(30)

# --- every close code --------------------------------------------------------

TERMINAL = [1008, 1009, 4500, 4501, 4502, 4999]
RECONNECT = {  # code -> the delay bounds of the reconnect after a welcomed socket
    1001: (0, 0.05),
    1012: (0, 0.05),
    1006: (0, 0.05),
    1011: (0, 0.05),
    4000: (0, 0.05),
    4499: (0, 0.05),
    3000: (0, 0.05),
    1013: (0.2, 0.4),
}


@pytest.mark.parametrize("code", TERMINAL)
async def test_a_terminal_code_stops_with_closed(code: int) -> None:
    async with FakeGateway([then_close(code)]) as gw:
        rec = Recorder()
        sub = rec.subscriber(gw.url)
        with pytest.raises(Closed) as exc:
            await asyncio.wait_for(collect(sub, []), 5)
        assert exc.value.code == code
        await asyncio.sleep(0.3)  # longer than any backoff here: no second attempt
        assert len(gw.queries) == 1
        assert rec.states[-1].state == "disconnected" and rec.states[-1].code == code
        await sub.close()


async def test_a_normal_close_from_the_server_ends_the_iteration() -> None:
    async with FakeGateway([then_close(1000)]) as gw:
        sub = Recorder().subscriber(gw.url)
        await asyncio.wait_for(collect(sub, []), 5)  # no error
        assert len(gw.queries) == 1


@pytest.mark.parametrize("code", sorted(RECONNECT))
async def test_a_reconnect_code_reconnects_with_its_delay(code: int) -> None:
    async with FakeGateway([then_close(code)]) as gw:
        rec = Recorder()
        async with rec.subscriber(gw.url) as sub:
            await wait_for(lambda: sub.stats.connections == 2, 5, message="the reconnect")
        low, high = RECONNECT[code]
        (delay,) = rec.delays()
        assert low <= delay <= high
        assert [s.code for s in rec.states if s.delay is not None] == [code]


async def test_token_expired_refreshes_the_token_and_reconnects_at_once() -> None:
    tokens = iter(["t1", "t2", "t3"])

    async def get_token() -> str:
        return next(tokens)

    async with FakeGateway([then_close(4001)]) as gw:
        rec = Recorder()
        async with rec.subscriber(gw.url, user=None, get_token=get_token) as sub:
            await wait_for(lambda: sub.stats.connections == 2, 5, message="the reconnect")
            assert [q["token"] for q in gw.queries] == ["t1", "t2"]
            assert rec.delays() == [0]
            assert sub.stats.token_calls == 2


async def test_token_expired_without_get_token_stops() -> None:
    async with FakeGateway([then_close(4001)]) as gw:
        sub = Recorder().subscriber(gw.url, user=None, token="static")
        with pytest.raises(Closed) as exc:
            await asyncio.wait_for(collect(sub, []), 5)
        assert exc.value.code == 4001 and len(gw.queries) == 1


@pytest.mark.parametrize("code", [1001, 1012, 4001])
async def test_closes_before_the_welcome_back_off_and_grow(code: int) -> None:
    """A pod that accepts and closes at once (full, draining) is backed off from."""
    async with FakeGateway([then_close(code, welcomed=False)] * 3) as gw:
        rec = Recorder()
        async with rec.subscriber(gw.url, get_token=lambda: "tok", user=None) as sub:
            await wait_for(lambda: sub.stats.connections == 1, 5, message="the fourth socket")
        assert rec.delays() == pytest.approx([0.05, 0.1, 0.2], rel=0.01)


async def test_no_welcome_in_time_is_dropped_and_retried() -> None:
    async def silent(ws: ServerConnection) -> None:
        await ws.wait_closed()

    async with FakeGateway([silent]) as gw:
        rec = Recorder()
        async with rec.subscriber(gw.url, timeout=0.3) as sub:
            await wait_for(lambda: sub.stats.connections == 1, 5, message="the second socket")
        assert rec.states[1].reason == "no welcome in time" and len(rec.delays()) == 1


async def test_an_unreachable_server_is_retried_with_growing_backoff_until_max_retries() -> None:
    rec = Recorder()
    with refusing_port() as port:
        sub = rec.subscriber(f"ws://127.0.0.1:{port}/ws", max_retries=3)
        with pytest.raises(Closed) as exc:
            await asyncio.wait_for(collect(sub, []), 5)
    assert exc.value.code == 1006
    assert rec.delays() == pytest.approx([0.05, 0.1, 0.2], rel=0.01)


async def test_once_stops_at_the_first_close() -> None:
    async with FakeGateway([then_close(1012)]) as gw:
        sub = Recorder().subscriber(gw.url, reconnect=False)
        with pytest.raises(Closed):
            await asyncio.wait_for(collect(sub, []), 5)
        assert len(gw.queries) == 1


# --- tokens --------------------------------------------------------------------


async def test_get_token_is_single_flight() -> None:
    calls = 0

    async def get_token() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return f"t{calls}"

    sub = Subscriber("ws://127.0.0.1:1/ws", get_token=get_token)
    assert await asyncio.gather(*(sub.refresh_token() for _ in range(5))) == ["t1"] * 5
    assert calls == 1
    assert await sub.refresh_token() == "t2"  # the next refresh is a new call


async def test_a_sync_get_token_works() -> None:
    async with FakeGateway([]) as gw:
        async with Subscriber(gw.url, get_token=lambda: "sync-token") as sub:
            await wait_for(lambda: sub.state == "connected", 5, message="connected")
        assert gw.queries[0]["token"] == "sync-token"


@pytest.mark.parametrize("how", ["raise", "return"])
async def test_unauthorized_from_get_token_stops_before_connecting(how: str) -> None:
    def get_token() -> str:
        if how == "raise":
            raise Unauthorized("logged out")
        return Unauthorized("logged out")  # type: ignore[return-value]

    async with FakeGateway([]) as gw:
        sub = Subscriber(gw.url, get_token=get_token)
        with pytest.raises(Closed) as exc:
            await asyncio.wait_for(collect(sub, []), 5)
        assert exc.value.code == 4500 and "logged out" in exc.value.reason
        assert gw.queries == []


async def test_a_failing_get_token_is_retried_with_backoff() -> None:
    calls = 0

    def get_token() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise RuntimeError("token service down")
        return "ok"

    async with FakeGateway([]) as gw:
        rec = Recorder()
        async with rec.subscriber(gw.url, user=None, get_token=get_token) as sub:
            await wait_for(lambda: sub.state == "connected", 5, message="connected")
        assert calls == 3 and rec.delays() == pytest.approx([0.05, 0.1], rel=0.01)
        assert [c for c, _ in rec.errors] == ["token", "token"]


async def test_the_token_is_refreshed_before_exp_while_connected() -> None:
    calls = 0

    def get_token() -> str:
        nonlocal calls
        calls += 1
        return token({"sub": "u", "exp": int(time.time()) + 2})

    async with FakeGateway([]) as gw:
        # A 2 s token with a 30 s margin is refreshed half-way, not in a loop.
        async with Subscriber(gw.url, get_token=get_token):
            await wait_for(lambda: calls >= 2, 5, message="the refresh")
            await asyncio.sleep(0.3)
            assert calls == 2 and len(gw.queries) == 1  # refreshed, same socket


# --- recovery bookkeeping ------------------------------------------------------


async def test_since_is_the_greatest_id_and_channels_resubscribe_with_their_own() -> None:
    a, b, c, d = ids(4)

    async def first(ws: ServerConnection) -> None:
        await welcome(ws)
        await wait_for(lambda: gw.frames[0], 5)  # the subscribe
        await ws.send(orjson.dumps({"type": "subscribed", "channel": "news"}))
        for m in (
            msg(c, user="u"),
            msg(a, channel="news"),
            msg(c, user="u"),
            msg(b, broadcast=True),
        ):
            await ws.send(m)
        await ws.close(1012, "rebalance: reconnect")

    async def second(ws: ServerConnection) -> None:
        await welcome(ws, recovered=True, missed=1)
        await ws.send(msg(d, user="u"))  # the replay
        await wait_for(lambda: gw.frames[1], 5)
        await ws.send(orjson.dumps({"type": "subscribed", "channel": "news", "recovered": True,
                                    "missed": 0}))  # fmt: skip
        await ws.send(msg(b, broadcast=True))  # a duplicate of a live one
        await ws.wait_closed()

    async with FakeGateway([first, second]) as gw:
        rec = Recorder()
        got: list[Message] = []
        async with rec.subscriber(gw.url, channels=["news"]) as sub:
            reader = asyncio.create_task(collect(sub, got))
            await wait_for(lambda: len(got) == 4 and len(rec.recoveries) == 2, 5, message="all")
            reader.cancel()
        assert "since" not in gw.queries[0]
        assert gw.queries[1]["since"] == c  # the greatest, not the last (b)
        assert gw.frames[0] == [{"type": "subscribe", "channel": "news"}]  # new: no since
        assert gw.frames[1] == [{"type": "subscribe", "channel": "news", "since": a}]
        assert [m.id for m in got] == [c, a, b, d]  # duplicates dropped
        assert sub.stats.duplicates == 2
        assert rec.recoveries == [Recovery(True, 1, c), Recovery(True, 0, a, "news")]


async def test_a_server_side_subscription_delivers_and_is_not_sent_again() -> None:
    """The connect proxy's backend subscribes the connection itself ("subscribe" in its
    answer): the server's unasked subscribed frame makes the channel the subscriber's, its
    messages arrive, and a reconnect leaves re-subscribing it to the server."""
    a, b = ids(2)

    async def first(ws: ServerConnection) -> None:
        await welcome(ws)
        await ws.send(orjson.dumps({"type": "subscribed", "channel": "orders.42"}))
        await ws.send(msg(a, channel="orders.42"))
        await ws.close(1012, "rebalance: reconnect")

    async def second(ws: ServerConnection) -> None:
        await welcome(ws)
        await ws.send(orjson.dumps({"type": "subscribed", "channel": "orders.42"}))
        await ws.send(msg(b, channel="orders.42"))
        await ws.wait_closed()

    async with FakeGateway([first, second]) as gw:
        rec = Recorder()
        got: list[Message] = []
        async with rec.subscriber(gw.url) as sub:
            reader = asyncio.create_task(collect(sub, got))
            await wait_for(lambda: len(got) == 2, 5, message="both messages")
            reader.cancel()
            assert sub.subscribed == ["orders.42"]
        assert [m.id for m in got] == [a, b]
        assert gw.frames[1] == []  # the server subscribes it again, not the client


async def test_a_reconnect_without_since_is_a_resync() -> None:
    async with FakeGateway([then_close(1012)]) as gw:
        rec = Recorder()
        async with rec.subscriber(gw.url) as sub:
            reader = asyncio.create_task(collect(sub, []))
            await wait_for(lambda: rec.recoveries, 5, message="the resync")
            reader.cancel()
        assert rec.recoveries == [Recovery(False, 0, None)] and rec.recoveries[0].resync


async def test_a_refused_subscription_is_dropped_and_reported() -> None:
    async def refuse(ws: ServerConnection) -> None:
        await welcome(ws)
        await wait_for(lambda: gw.frames[0], 5)
        await ws.send(orjson.dumps({"type": "error", "code": "forbidden", "message": "no"}))
        await ws.wait_closed()

    async with FakeGateway([refuse]) as gw:
        rec = Recorder()
        async with rec.subscriber(gw.url, channels=["secret"]) as sub:
            await wait_for(lambda: rec.errors, 5, message="the error")
            assert sub.channels == [] and rec.errors[0][0] == "forbidden"


async def test_a_slow_consumer_does_not_block_the_read_loop_and_loses_nothing() -> None:
    """Queue full: the subscriber drops its socket, waits for the consumer, and recovers
    with since the greatest id it queued; memory stays bounded by queue_size."""
    all_ids = ids(10)

    async def burst(ws: ServerConnection) -> None:
        await welcome(ws)
        for mid in all_ids:
            await ws.send(msg(mid, user="u"))
        await ws.wait_closed()

    async def replay(ws: ServerConnection) -> None:
        since = gw.queries[-1]["since"]
        await welcome(ws, recovered=True, missed=sum(m > since for m in all_ids))
        for mid in all_ids:
            if mid > since:
                await ws.send(msg(mid, user="u"))
        await ws.wait_closed()

    async with FakeGateway([burst] + [replay] * 10) as gw:
        rec = Recorder()
        async with rec.subscriber(gw.url, queue_size=4) as sub:
            await wait_for(lambda: len(gw.queries) == 1 and sub.stats.overflows == 1, 5)
            await asyncio.sleep(0.2)
            assert len(gw.queries) == 1  # it waits for the consumer before reconnecting
            got: list[Message] = []
            reader = asyncio.create_task(collect(sub, got))
            await wait_for(lambda: len(got) == 10, 5, message="every message")
            reader.cancel()
        assert [m.id for m in got] == all_ids  # each once, in order
        assert gw.queries[1]["since"] == all_ids[3]
        assert rec.recoveries[0] == Recovery(True, 6, all_ids[3])
        assert all(r.recovered for r in rec.recoveries)


async def test_a_callback_that_raises_does_not_break_the_connection() -> None:
    def bad(change: StateChange) -> None:
        raise RuntimeError("listener bug")

    async with FakeGateway([]) as gw:
        async with Subscriber(gw.url, on_state=bad) as sub:
            await wait_for(lambda: sub.state == "connected", 5, message="connected")


async def test_a_4001_during_a_refresh_in_flight_waits_for_it_instead_of_calling_again() -> None:
    """The refresh timer and the expiry close race: one get_token call serves both."""
    calls = 0

    async def get_token() -> str:
        nonlocal calls
        calls += 1
        if calls > 1:
            await asyncio.sleep(0.3)  # the refresh is still in flight when 4001 comes
        return token({"sub": "u", "exp": int(time.time()) + 3, "n": calls})

    async def expire_during_refresh(ws: ServerConnection) -> None:
        await welcome(ws)
        await wait_for(lambda: calls == 2, 5, message="the refresh started")
        await ws.close(4001, "token expired")

    async with FakeGateway([expire_during_refresh]) as gw:
        rec = Recorder()
        async with rec.subscriber(gw.url, user=None, get_token=get_token) as sub:
            await wait_for(lambda: sub.stats.connections == 2, 5, message="the reconnect")
            assert calls == 2
            first, second = (claims(q["token"]) for q in gw.queries)
            assert (first["n"], second["n"]) == (1, 2)
