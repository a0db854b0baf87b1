"""clarion.client's policy against fakes: the close-code table (the same as the server's and
the JS client's), backoff bounds, token refresh single-flight, and the Subscriber driven by a
scripted WebSocket server that closes with every code."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import orjson
import pytest
from websockets.asyncio.server import ServerConnection, serve

from clarion import disconnects
from clarion.client import (
    CLOSE_CODES,
    Action,
    AsyncPublisher,
    Backoff,
    Closed,
    Message,
    Publisher,
    PublishError,
    Recovery,
    StateChange,
    Subscriber,
    Unauthorized,
    close_action,
    reconnect_delay,
)

from .support import REPO, wait_for

pytestmark = pytest.mark.timeout(30)

# --- the table -------------------------------------------------------------

EXPECTED = {
    1000: Action.STOP,
    1001: Action.SOON,
    1006: Action.BACKOFF,
    1008: Action.FATAL,
    1009: Action.FATAL,
    1011: Action.BACKOFF,
    1012: Action.SOON,
    1013: Action.SLOW,
    4000: Action.BACKOFF,
    4001: Action.TOKEN,
    4002: Action.BACKOFF,
    4499: Action.BACKOFF,
    4500: Action.FATAL,
    4501: Action.FATAL,
    4502: Action.FATAL,
    4999: Action.FATAL,
    3000: Action.BACKOFF,
    5000: Action.BACKOFF,
    1002: Action.BACKOFF,
}


@pytest.mark.parametrize("code", sorted(EXPECTED))
def test_close_action_of_each_code_and_range_edge(code: int) -> None:
    assert close_action(code) is EXPECTED[code]


def test_the_table_is_the_js_clients() -> None:
    ts = (REPO / "clients/js/src/close-codes.ts").read_text()
    js = {int(c): a for c, a in re.findall(r'(\d{4}): \{ name: "[^"]*", action: "(\w+)" \}', ts)}
    assert js == {code: info.action.value for code, info in CLOSE_CODES.items()}


@pytest.mark.parametrize("d", disconnects.ALL, ids=lambda d: f"{d.code}-{d.label}")
def test_the_client_does_what_the_servers_table_says(d: disconnects.Disconnect) -> None:
    """Each server close's documented client action (disconnects.py) is the client's."""
    action = close_action(d.code)
    text = d.action
    if d.code == 1000:
        assert action is Action.STOP
    elif text.startswith("stop"):
        assert action is Action.FATAL
    elif text == disconnects.SOON:
        assert action is Action.SOON
    elif "at least 2 s" in text:
        assert action is Action.SLOW
        assert Backoff().slow_min == 2.0
    elif "new token" in text:
        assert action is Action.TOKEN
    else:
        assert text == disconnects.BACKOFF and action is Action.BACKOFF


# --- backoff ---------------------------------------------------------------


def test_backoff_is_full_jitter_and_bounded() -> None:
    top = Backoff(base=0.5, max=20, random=lambda: 0.999999)
    ceilings = [top.next() for _ in range(10)]
    assert ceilings[:4] == pytest.approx([0.5, 1, 2, 4], rel=1e-4)
    assert max(ceilings) == pytest.approx(20, rel=1e-4)  # capped
    bottom = Backoff(random=lambda: 0.0)
    assert [bottom.next() for _ in range(5)] == [0.0] * 5  # full jitter reaches zero
    top.reset()
    assert top.next() == pytest.approx(0.5, rel=1e-4)


def test_slow_is_at_least_two_seconds_and_at_most_max() -> None:
    low = Backoff(random=lambda: 0.0)
    high = Backoff(random=lambda: 0.999999)
    assert all(low.slow() == 2.0 for _ in range(5))
    assert all(2.0 <= high.slow() <= 20.0 for _ in range(40))
    assert high.attempts == 40  # slow grows the backoff too


def test_soon_is_a_small_spread_that_does_not_grow() -> None:
    b = Backoff(random=lambda: 0.999999)
    assert all(b.soon() < 1.0 for _ in range(20))
    assert b.attempts == 0


@pytest.mark.parametrize("action", [Action.SOON, Action.TOKEN, Action.BACKOFF])
def test_a_close_before_the_welcome_always_backs_off(action: Action) -> None:
    b = Backoff(base=1, max=8, random=lambda: 0.999999)
    delays = [reconnect_delay(b, action, welcomed=False) for _ in range(4)]
    assert delays == pytest.approx([1, 2, 4, 8], rel=1e-4)


def test_after_a_welcome_soon_and_token_do_not_grow() -> None:
    b = Backoff(random=lambda: 0.999999)
    assert reconnect_delay(b, Action.TOKEN, welcomed=True) == 0
    assert reconnect_delay(b, Action.SOON, welcomed=True) < 1
    assert b.attempts == 0
    assert reconnect_delay(b, Action.SLOW, welcomed=True) >= 2


# --- a scripted gateway ----------------------------------------------------

Step = Callable[[ServerConnection], Awaitable[None]]


class FakeGateway:
    """A real WebSocket server that plays one step per connection (then holds sockets
    open after a welcome), recording each connection's query and frames."""

    def __init__(self, steps: list[Step]) -> None:
        self.steps = steps
        self.queries: list[dict[str, str]] = []
        self.frames: list[list[dict[str, Any]]] = []
        self.url = ""

    async def handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        query = {k: v[0] for k, v in parse_qs(urlsplit(ws.request.path).query).items()}
        self.queries.append(query)
        frames: list[dict[str, Any]] = []
        self.frames.append(frames)
        n = len(self.queries) - 1

        async def read() -> None:
            async for raw in ws:
                frames.append(orjson.loads(raw))

        reader = asyncio.create_task(read())
        try:
            await (self.steps[n] if n < len(self.steps) else hold)(ws)
        finally:
            reader.cancel()

    async def __aenter__(self) -> FakeGateway:
        self._server = await serve(self.handler, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}/ws"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        await self._server.wait_closed()


async def welcome(ws: ServerConnection, **extra: Any) -> None:
    await ws.send(
        orjson.dumps({"type": "welcome", "pod": "fake", "conn": "c", "user": "u", **extra})
    )


async def hold(ws: ServerConnection) -> None:
    await welcome(ws)
    await ws.wait_closed()


def then_close(code: int, *, welcomed: bool = True) -> Step:
    async def step(ws: ServerConnection) -> None:
        if welcomed:
            await welcome(ws)
        if code == 1006:
            ws.transport.abort()  # no close frame
        else:
            await ws.close(code, f"closing {code}")

    return step


def fast(**kw: Any) -> Backoff:
    """Top-of-range delays, small enough for tests."""
    return Backoff(
        **{"base": 0.05, "max": 0.4, "soon": 0.05, "slow_min": 0.2, "random": lambda: 0.999, **kw}
    )


def msg(mid: str, **target: Any) -> bytes:
    return orjson.dumps({"type": "message", "id": mid, "target": target, "data": mid, "ts": 1})


def ids(n: int, start: int = 0) -> list[str]:
    """Ids that sort like UUIDv7s do."""
    return [f"0190a000-0000-7000-8000-{i:012d}" for i in range(start, start + n)]


class Recorder:
    def __init__(self) -> None:
        self.states: list[StateChange] = []
        self.recoveries: list[Recovery] = []
        self.errors: list[tuple[str, str]] = []

    def subscriber(self, url: str, **kw: Any) -> Subscriber:
        kw.setdefault("user", "u")
        kw.setdefault("backoff", fast())
        return Subscriber(
            url,
            on_state=self.states.append,
            on_recovery=self.recoveries.append,
            on_error=lambda c, m: self.errors.append((c, m)),
            **kw,
        )

    def delays(self) -> list[float]:
        return [s.delay for s in self.states if s.delay is not None]


async def collect(sub: Subscriber, into: list[Message]) -> None:
    async for m in sub:
        into.append(m)


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
    from testkit.net import free_port

    rec = Recorder()
    sub = rec.subscriber(f"ws://127.0.0.1:{free_port('127.0.0.1')}/ws", max_retries=3)
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
    import jwt

    calls = 0

    def get_token() -> str:
        nonlocal calls
        calls += 1
        return jwt.encode({"sub": "u", "exp": int(time.time()) + 2}, "k" * 32)

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


# --- the publisher's retries ----------------------------------------------------


def scripted_transport(statuses: list[int | Exception]) -> tuple[httpx.MockTransport, list[Any]]:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = statuses[len(seen) - 1]
        if isinstance(answer, Exception):
            raise answer
        if answer == 202:
            body = orjson.loads(request.content)
            if "messages" in body:
                return httpx.Response(
                    202, json={"ids": [f"id{i}" for i in range(len(body["messages"]))]}
                )
            return httpx.Response(202, json={"id": "id0"})
        return httpx.Response(answer, json={"error": "x", "message": f"status {answer}"})

    return httpx.MockTransport(handle), seen


CONNECT_ERROR = httpx.ConnectError("refused")


def test_publisher_retries_503_and_connection_errors_with_one_idempotency_key() -> None:
    transport, seen = scripted_transport([503, CONNECT_ERROR, httpx.ReadTimeout("t"), 202])
    with Publisher(
        "http://gw", "key", backoff=fast(), client=httpx.Client(transport=transport)
    ) as p:
        assert p.publish({"a": 1}, user="u1") == "id0"
    keys = {r.headers["Idempotency-Key"] for r in seen}
    assert len(seen) == 4 and len(keys) == 1
    assert all(r.headers["Authorization"] == "Bearer key" for r in seen)
    assert orjson.loads(seen[0].content) == {"user": "u1", "data": {"a": 1}}


@pytest.mark.parametrize("status", [400, 401, 413])
def test_publisher_does_not_retry_a_refusal(status: int) -> None:
    transport, seen = scripted_transport([status, 202])
    p = Publisher("http://gw", backoff=fast(), client=httpx.Client(transport=transport))
    with pytest.raises(PublishError) as exc:
        p.publish(1, broadcast=True)
    assert exc.value.status == status and len(seen) == 1


def test_publisher_gives_up_after_its_retries() -> None:
    transport, seen = scripted_transport([503] * 3)
    p = Publisher("http://gw", retries=2, backoff=fast(), client=httpx.Client(transport=transport))
    with pytest.raises(PublishError) as exc:
        p.publish(1, channel="c")
    assert exc.value.status == 503 and len(seen) == 3


@pytest.mark.parametrize(
    "targets", [{}, {"user": "u", "channel": "c"}, {"user": "u", "broadcast": True}]
)
def test_publish_needs_exactly_one_target(targets: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Publisher("http://gw").publish(1, **targets)


async def test_async_publisher_batch_keys_each_message_the_same_on_every_retry() -> None:
    """Each message of a batch carries its own idempotency key, kept across retries."""
    from clarion.client import message

    transport, seen = scripted_transport([503, 202])
    async with AsyncPublisher(
        "http://gw/", backoff=fast(), client=httpx.AsyncClient(transport=transport)
    ) as p:
        batch = [message(1, user="u"), {**message(2, channel="c"), "idempotency_key": "mine"}]
        assert await p.publish_batch(batch) == ["id0", "id1"]
    assert str(seen[0].url) == "http://gw/api/publish"
    first, second = (orjson.loads(r.content)["messages"] for r in seen)
    assert first == second  # a retry sends the same keys
    assert [m["data"] for m in second] == [1, 2] and second[1]["idempotency_key"] == "mine"
    assert len({m["idempotency_key"] for m in second}) == 2
    assert "Idempotency-Key" not in seen[1].headers and "Authorization" not in seen[1].headers


async def test_a_4001_during_a_refresh_in_flight_waits_for_it_instead_of_calling_again() -> None:
    """The refresh timer and the expiry close race: one get_token call serves both."""
    import jwt

    calls = 0

    async def get_token() -> str:
        nonlocal calls
        calls += 1
        if calls > 1:
            await asyncio.sleep(0.3)  # the refresh is still in flight when 4001 comes
        return jwt.encode({"sub": "u", "exp": int(time.time()) + 3, "n": calls}, "k" * 32)

    async def expire_during_refresh(ws: ServerConnection) -> None:
        await welcome(ws)
        await wait_for(lambda: calls == 2, 5, message="the refresh started")
        await ws.close(4001, "token expired")

    async with FakeGateway([expire_during_refresh]) as gw:
        rec = Recorder()
        async with rec.subscriber(gw.url, user=None, get_token=get_token) as sub:
            await wait_for(lambda: sub.stats.connections == 2, 5, message="the reconnect")
            assert calls == 2
            first, second = (jwt.decode(q["token"], options={"verify_signature": False})
                             for q in gw.queries)  # fmt: skip
            assert (first["n"], second["n"]) == (1, 2)
