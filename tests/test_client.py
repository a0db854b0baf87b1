"""clarion_client end to end against real pods: in-process pods for the protocol, real
``clarion serve`` processes on RabbitMQ for a pod killed under a subscriber."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import jwt
import pytest

from clarion_client import (
    AsyncPublisher,
    Backoff,
    Closed,
    Message,
    Publisher,
    PublishError,
    Recovery,
    StateChange,
    Subscriber,
    message,
)

from .support import GatewayProcess, InProcessPod, PodFactory, Vhost, wait_for

pytestmark = pytest.mark.timeout(60)

SECRET = "client-e2e-secret-0123456789abcdef"
KEY = "client-e2e-key"
FAST = {"base": 0.1, "max": 1.0, "soon": 0.2, "slow_min": 0.5}


def token(sub: str, ttl: float = 300, **claims: Any) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time() + ttl), **claims}, SECRET)


@pytest.fixture(scope="module")
def dev_pod() -> Iterator[InProcessPod]:
    with InProcessPod(f"client-dev-{uuid.uuid4().hex[:6]}", auth="none") as pod:
        yield pod


@pytest.fixture(scope="module")
def jwt_pod() -> Iterator[InProcessPod]:
    with InProcessPod(
        f"client-jwt-{uuid.uuid4().hex[:6]}", auth="jwt", jwt_secret=SECRET, api_keys=[KEY]
    ) as pod:
        yield pod


class App:
    """What an application built on the subscriber sees."""

    def __init__(self, sub: Subscriber) -> None:
        self.sub = sub
        self.messages: list[Message] = []
        self.task = asyncio.create_task(self._read())
        self.error: BaseException | None = None

    async def _read(self) -> None:
        try:
            async for m in self.sub:
                self.messages.append(m)
        except Closed as exc:
            self.error = exc

    @property
    def ids(self) -> list[str]:
        return [m.id for m in self.messages]

    async def wait(self, sent: list[str], timeout: float = 15) -> None:
        await wait_for(lambda: set(sent) <= set(self.ids), timeout, message=f"{len(sent)} msgs")

    async def barrier(self, publisher: AsyncPublisher, user: str) -> str:
        """One more message, waited for: a duplicate of an earlier one would come before it."""
        mid = await publisher.publish("barrier", user=user)
        await self.wait([mid])
        return mid


@pytest.fixture
async def subscribers() -> AsyncIterator[list[Subscriber]]:
    made: list[Subscriber] = []
    yield made
    for s in made:
        await s.close()


def connected(sub: Subscriber) -> bool:
    return sub.state == "connected"


async def test_user_channel_and_broadcast_messages_arrive_once(
    dev_pod: InProcessPod, subscribers: list[Subscriber]
) -> None:
    user, channel = f"u-{uuid.uuid4().hex[:6]}", f"news.{uuid.uuid4().hex[:6]}"
    sub = Subscriber(dev_pod.ws_url, user=user, channels=[channel])
    subscribers.append(sub)
    app = App(sub)
    await wait_for(lambda: connected(sub), 5, message="connected")
    await wait_for(lambda: sub.subscribed == [channel], 5, message="subscribed")
    async with AsyncPublisher(dev_pod.http_url) as pub:
        sent = [await pub.publish({"i": i}, user=user) for i in range(3)]
        sent.append(await pub.publish("c", channel=channel))
        sent.append(await pub.publish("b", broadcast=True))
        sent += await pub.publish_batch([message(1, user=user), message(2, channel=channel)])
        sent.append(await app.barrier(pub, user))
    assert sorted(app.ids) == sorted(sent) and len(app.ids) == len(sent)
    assert sub.info is not None and sub.info["pod"] == dev_pod.pod_name
    assert [m.channel for m in app.messages].count(channel) == 2


def test_sync_publisher_against_a_real_pod(jwt_pod: InProcessPod) -> None:
    with Publisher(jwt_pod.http_url, KEY) as pub:
        assert len(pub.publish({"a": 1}, user="x")) == 36
        assert len(pub.publish_batch([message(1, broadcast=True), message(2, user="y")])) == 2
    with Publisher(jwt_pod.http_url, "wrong-key") as pub, pytest.raises(PublishError) as exc:
        pub.publish(1, user="x")
    assert exc.value.status == 401


async def test_the_server_accepts_the_idempotency_key_header(jwt_pod: InProcessPod) -> None:
    """Every single publish carries one; the server must not refuse it."""
    async with AsyncPublisher(jwt_pod.http_url, KEY) as pub:
        mid = await pub.publish(1, user="x", idempotency_key="order-42-paid")
    assert len(mid) == 36


async def test_a_bad_token_stops_after_one_attempt(
    jwt_pod: InProcessPod, subscribers: list[Subscriber]
) -> None:
    before = jwt_pod.metric("clarion_connections_closed_total", {"reason": "unauthorized"})
    sub = Subscriber(jwt_pod.ws_url, token=jwt.encode({"sub": "x"}, "not-the-secret-" * 3))
    subscribers.append(sub)
    app = App(sub)
    await asyncio.wait_for(app.task, 10)
    assert isinstance(app.error, Closed) and app.error.code == 4500
    after = jwt_pod.metric("clarion_connections_closed_total", {"reason": "unauthorized"})
    assert after - before == 1


async def test_token_expiry_refreshes_and_recovers_exactly_once(
    jwt_pod: InProcessPod, subscribers: list[Subscriber], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Against a server without refresh frames (one from before them, played by this pod
    answering them ``unknown_type``): a 3 s token is refreshed half-way, the server closes
    4001 at exp, the subscriber reconnects at once with the new token and since; nothing
    published meanwhile is lost or repeated. (With refresh frames there is no 4001:
    tests/test_refresh.py.)"""
    from clarion import session
    from clarion.protocol import ProtocolError, parse_client_frame

    def without_refresh(text: str) -> Any:
        frame = parse_client_frame(text)
        if frame.type == "refresh":
            raise ProtocolError("unknown_type", "unknown frame type 'refresh'")
        return frame

    monkeypatch.setattr(session, "parse_client_frame", without_refresh)
    user, channel = f"t-{uuid.uuid4().hex[:6]}", f"orders.{uuid.uuid4().hex[:6]}"
    calls = 0

    async def get_token() -> str:
        nonlocal calls
        calls += 1
        return token(user, ttl=3, channels=["orders.*"])

    states: list[StateChange] = []
    sub = Subscriber(
        jwt_pod.ws_url,
        get_token=get_token,
        channels=[channel],
        on_state=states.append,
        backoff=Backoff(**FAST),
    )
    subscribers.append(sub)
    app = App(sub)
    await wait_for(lambda: sub.subscribed == [channel], 5, message="subscribed")
    sent: list[str] = []
    async with AsyncPublisher(jwt_pod.http_url, KEY) as pub:
        deadline = time.monotonic() + 15
        while 4001 not in sub.stats.closes or sub.stats.connections < 2:
            assert time.monotonic() < deadline, "no 4001 and reconnect"
            sent.append(await pub.publish(len(sent), user=user))
            sent.append(await pub.publish(len(sent), channel=channel))
            await asyncio.sleep(0.05)
        for _ in range(5):
            sent.append(await pub.publish(len(sent), channel=channel))
        await app.wait(sent)
        sent.append(await app.barrier(pub, user))
    assert sorted(app.ids) == sorted(sent) and len(app.ids) == len(sent)
    expiry = next(s for s in states if s.code == 4001)
    assert expiry.delay == 0  # the token was refreshed before exp: no wait
    assert 2 <= calls <= 4


async def test_a_full_pod_is_backed_off_from_for_at_least_slow_min(
    subscribers: list[Subscriber],
) -> None:
    with InProcessPod(f"client-full-{uuid.uuid4().hex[:6]}", auth="none", max_connections=1) as p:
        first = Subscriber(p.ws_url, user="first")
        subscribers.append(first)
        first.start()
        await wait_for(lambda: connected(first), 5, message="the first socket")
        states: list[StateChange] = []
        sub = Subscriber(
            p.ws_url, user="x", max_retries=2, on_state=states.append, backoff=Backoff(**FAST)
        )
        subscribers.append(sub)
        app = App(sub)
        await asyncio.wait_for(app.task, 15)
    assert isinstance(app.error, Closed) and app.error.code == 1013
    delays = [s.delay for s in states if s.delay is not None]
    assert len(delays) == 2 and all(d >= FAST["slow_min"] for d in delays)


async def test_a_pod_killed_and_replaced_loses_nothing_and_repeats_nothing(
    vhost: Vhost, pod_factory: PodFactory, subscribers: list[Subscriber]
) -> None:
    """RabbitMQ: the subscriber's pod is SIGKILLed while another pod keeps publishing; a
    new pod comes up at the same address; the subscriber reconnects with since."""

    def pod(name: str, port: int | None = None) -> GatewayProcess:
        args = ["--auth", "none", "--no-demo"]
        made = pod_factory(1, name, port=port, amqp_url=vhost.amqp_url, args=args, start=False)
        return made[0].start()

    a, b = pod("client-a"), pod("client-b")
    try:
        a.wait_ready()
        b.wait_ready()
        user, channel = f"k-{uuid.uuid4().hex[:6]}", f"news.{uuid.uuid4().hex[:6]}"
        recoveries: list[Recovery] = []
        sub = Subscriber(
            a.ws_url,
            user=user,
            channels=[channel],
            backoff=Backoff(**FAST),
            on_recovery=recoveries.append,
        )
        subscribers.append(sub)
        app = App(sub)
        await wait_for(lambda: connected(sub), 10, message="connected")
        await wait_for(lambda: sub.subscribed == [channel], 5, message="subscribed")
        sent: list[str] = []
        async with AsyncPublisher(b.http_url) as pub:
            for i in range(5):
                sent.append(await pub.publish(i, user=user))
                sent.append(await pub.publish(i, channel=channel))
            await app.wait(sent)
            a.kill()
            await wait_for(lambda: sub.state != "connected", 10, message="the drop")
            for i in range(5):  # while the subscriber has no socket
                sent.append(await pub.publish(i, user=user))
                sent.append(await pub.publish(i, channel=channel))
                sent.append(await pub.publish(i, broadcast=True))
            reborn = pod("client-a2", port=a.port)
            try:
                await asyncio.to_thread(reborn.wait_ready)
                await app.wait(sent, 30)
                sent.append(await app.barrier(pub, user))
            finally:
                reborn.kill()
        assert sorted(app.ids) == sorted(sent) and len(app.ids) == len(sent)
        assert sub.stats.duplicates >= 0 and sub.stats.connections == 2
        assert {r.channel for r in recoveries} == {None, channel}
        assert all(r.recovered for r in recoveries)
    finally:
        a.kill()
        b.kill()


async def test_the_readmes_backend_example_publishes(
    jwt_pod: InProcessPod, subscribers: list[Subscriber]
) -> None:
    import re

    from .support import REPO

    readme = (REPO / "README.md").read_text()
    (code,) = [c for c in re.findall(r"```python\n(.*?)```", readme, re.S) if "Publisher" in c]
    assert len(code.strip().splitlines()) <= 5
    code = code.replace("http://localhost:8080", jwt_pod.http_url).replace('"KEY"', repr(KEY))
    sub = Subscriber(
        jwt_pod.ws_url, token=token("u1", channels=["orders.*"]), channels=["orders.eu"]
    )
    subscribers.append(sub)
    app = App(sub)
    await wait_for(lambda: connected(sub), 5, message="connected")
    await wait_for(lambda: sub.subscribed == ["orders.eu"], 5, message="subscribed")
    await asyncio.to_thread(exec, code, {})
    await wait_for(lambda: len(app.messages) == 2, 10, message="the two messages")
    assert [m.data for m in app.messages] == [{"order": 42, "status": "paid"}, {"price": 9.5}]


@pytest.mark.parametrize("demo", [True, False])
def test_the_pod_serves_the_js_bundle_with_the_demo(demo: bool) -> None:
    import httpx

    from .support import REPO

    with InProcessPod(auth="none", demo=demo) as pod:
        r = httpx.get(f"{pod.http_url}/clarion.js")
    if demo:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/javascript")
        assert r.content == (REPO / "service/clarion/static/clarion.js").read_bytes()
    else:
        assert r.status_code == 404
