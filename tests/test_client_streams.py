"""The Python ``Subscriber`` on HTTP streams (SSE and NDJSON), end to end.

Real ``clarion serve`` pods on a real RabbitMQ vhost behind Debian's nginx
refusing every WebSocket upgrade (tests/test_streams_proxy.py's proxy): the
subscriber falls back by itself, and keeps its guarantees on the stream across
a SIGKILL of its pod and a SIGTERM drain (every message once, recovered with
``since``); in-process pods for the token refresh and the close-code policy.
"""

# ruff: noqa: F811 (the fixtures jwt_pod and subscribers are test_client's, imported)
from __future__ import annotations

import asyncio
import shutil
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
import pytest

from clarion_client import AsyncPublisher, Backoff, Closed, Recovery, StateChange, Subscriber
from clarion_client.streams import StreamLink, http_url

from .support import InProcessPod, PodFactory, Vhost, loopbacks, wait_for
from .test_client import FAST, KEY, App, jwt_pod, subscribers, token  # noqa: F401 (fixtures)
from .test_streams_proxy import Nginx

pytestmark = pytest.mark.timeout(90)

STREAMS = ["sse", "http_stream"]


def test_stream_urls_follow_the_websocket_url() -> None:
    assert http_url("wss://h.example/prefix/ws?a=1", "/sse") == "https://h.example/prefix/sse?a=1"
    assert http_url("ws://h:8080/ws", "/emulation") == "http://h:8080/emulation"
    assert http_url("ws://h:8080/", "/stream") == "http://h:8080/stream"
    assert http_url("ws://h:8080", "/sse") == "http://h:8080/sse"


@pytest.mark.parametrize(
    "kwargs",
    [{"transports": []}, {"transports": ["websocket", "longpoll"]}, {"fallback_after": 0}],
)
def test_bad_transport_options_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Subscriber("ws://h/ws", user="u", **kwargs)


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx not installed")
@pytest.mark.parametrize("transport", STREAMS)
async def test_behind_a_proxy_refusing_websocket_it_falls_back_and_loses_nothing(
    transport: str,
    vhost: Vhost,
    pod_factory: PodFactory,
    tmp_path: Path,
    subscribers: list[Subscriber],
) -> None:
    """Three pods behind nginx (round robin, no stickiness, 403 to every upgrade): the
    subscriber falls back to ``transport``, its subscribe frames are posted to any pod;
    the pod holding its stream is SIGKILLed, then the next one drains (SIGTERM): user,
    channel and broadcast messages published all along arrive once each."""
    args = ["--auth", "none", "--drain-delay", "0", "--drain-window", "0"]
    first = 90 if transport == "sse" else 94
    hosts = loopbacks(first, 3)
    with pod_factory(3, f"cs-{transport}", amqp_url=vhost.amqp_url, args=args, hosts=hosts) as pods:
        by_name = {p.pod_name: p for p in pods}
        with Nginx(tmp_path, pods, buffering=False) as proxy:
            user, channel = f"s-{uuid.uuid4().hex[:6]}", f"news.{uuid.uuid4().hex[:6]}"
            states: list[StateChange] = []
            recoveries: list[Recovery] = []
            sub = Subscriber(
                proxy.url.replace("http", "ws", 1) + "/ws",
                user=user,
                channels=[channel],
                transports=["websocket", transport],
                backoff=Backoff(**FAST),
                on_state=states.append,
                on_recovery=recoveries.append,
            )
            subscribers.append(sub)
            app = App(sub)
            await wait_for(lambda: sub.subscribed == [channel], 15, message="subscribed")
            assert sub.transport == transport
            assert [s.code for s in states if s.delay is not None][:1] == [1006]  # the 403

            sent: list[str] = []
            # Through the proxy as well: it skips a dead pod; a retry keeps its key.
            async with AsyncPublisher(proxy.url) as pub:

                async def publish_round(i: int) -> None:
                    sent.append(await pub.publish(i, user=user))
                    sent.append(await pub.publish(i, channel=channel))
                    sent.append(await pub.publish(i, broadcast=True))

                for i in range(3):
                    await publish_round(i)
                await app.wait(sent)

                for how in ("SIGKILL", "SIGTERM"):
                    assert sub.info is not None
                    holder = by_name[str(sub.info["pod"])]
                    connections = sub.stats.connections
                    seen = len(states)
                    if how == "SIGKILL":
                        holder.kill()
                    else:
                        holder.signal(signal.SIGTERM)
                    # The drop (in the history: a reconnect can be quicker than a poll).
                    await wait_for(
                        lambda n=seen: any(s.state != "connected" for s in states[n:]),
                        10,
                        message="the drop",
                    )
                    for i in range(3):  # while the subscriber has no stream (or a new one)
                        await publish_round(i)
                    await wait_for(
                        lambda n=connections: sub.stats.connections > n and sub.subscribed,
                        20,
                        message=f"back after {how}",
                    )
                    await app.wait(sent, 20)
                sent.append(await app.barrier(pub, user))
            assert sub.transport == transport
            assert sorted(app.ids) == sorted(sent) and len(app.ids) == len(sent)
            closes = [s.code for s in states if s.delay is not None]
            assert 1001 in closes, closes  # the drain's close frame, read as a close code
            assert all(r.recovered for r in recoveries), recoveries


@pytest.mark.parametrize("transport", STREAMS)
async def test_the_token_is_refreshed_on_the_stream(
    transport: str, jwt_pod: InProcessPod, subscribers: list[Subscriber]
) -> None:
    """A 3 s token is refreshed in band (the refresh frame posted to /emulation): one
    stream outlives several tokens, no 4001, and every message arrives once."""
    user, channel = f"t-{uuid.uuid4().hex[:6]}", f"orders.{uuid.uuid4().hex[:6]}"
    calls = 0

    async def get_token() -> str:
        nonlocal calls
        calls += 1
        return token(user, ttl=3, channels=["orders.*"])

    sub = Subscriber(
        jwt_pod.ws_url,
        get_token=get_token,
        channels=[channel],
        transports=[transport],
        backoff=Backoff(**FAST),
    )
    subscribers.append(sub)
    app = App(sub)
    await wait_for(lambda: sub.subscribed == [channel], 10, message="subscribed")
    sent: list[str] = []
    async with AsyncPublisher(jwt_pod.http_url, KEY) as pub:
        deadline = time.monotonic() + 20
        while sub.stats.refreshes < 3:
            assert time.monotonic() < deadline, f"{sub.stats.refreshes} refreshes"
            sent.append(await pub.publish(len(sent), user=user))
            sent.append(await pub.publish(len(sent), channel=channel))
            await asyncio.sleep(0.1)
        await app.wait(sent)
        sent.append(await app.barrier(pub, user))
    assert sorted(app.ids) == sorted(sent) and len(app.ids) == len(sent)
    assert sub.stats.connections == 1 and 4001 not in sub.stats.closes
    assert calls >= 4


@pytest.mark.parametrize("transport", STREAMS)
async def test_a_refused_token_stops_after_one_attempt(
    transport: str, jwt_pod: InProcessPod, subscribers: list[Subscriber]
) -> None:
    """The refusal comes before the stream (401 with its close code): 4500 is terminal
    on a stream as on a WebSocket, and does not move the subscriber to another transport."""
    sub = Subscriber(
        jwt_pod.ws_url,
        token=jwt.encode({"sub": "x"}, "not-the-secret-" * 3),
        transports=[transport, "websocket"],
    )
    subscribers.append(sub)
    app = App(sub)
    await asyncio.wait_for(app.task, 10)
    assert isinstance(app.error, Closed) and app.error.code == 4500
    assert sub.transport == transport and list(sub.stats.closes) == [4500]


async def test_a_full_pod_is_an_answer_not_a_blocked_transport(
    subscribers: list[Subscriber],
) -> None:
    """A full pod closes the stream with 1013 before any welcome: the slow backoff, and
    the same transport next time."""
    with InProcessPod(f"cstream-full-{uuid.uuid4().hex[:6]}", auth="none", max_connections=1) as p:
        first = Subscriber(p.ws_url, user="first", transports=["sse"])
        subscribers.append(first)
        first.start()
        await wait_for(lambda: first.state == "connected", 5, message="the first stream")
        states: list[StateChange] = []
        sub = Subscriber(
            p.ws_url,
            user="x",
            transports=["sse", "http_stream"],
            max_retries=1,
            on_state=states.append,
            backoff=Backoff(**FAST),
        )
        subscribers.append(sub)
        app = App(sub)
        await asyncio.wait_for(app.task, 15)
    assert isinstance(app.error, Closed) and app.error.code == 1013
    assert sub.transport == "sse" and list(sub.stats.closes) == [1013, 1013]
    delays = [s.delay for s in states if s.delay is not None]
    assert delays and all(d >= FAST["slow_min"] for d in delays)


async def test_an_unknown_since_is_a_resync(subscribers: list[Subscriber]) -> None:
    """A ``since`` the history does not know: ``Recovery(recovered=False)`` on the stream
    too, before the live messages."""
    with InProcessPod(f"cstream-since-{uuid.uuid4().hex[:6]}", auth="none") as p:
        recoveries: list[Recovery] = []
        sub = Subscriber(
            p.ws_url,
            user="r",
            since=str(uuid.UUID(int=1)),
            transports=["sse"],
            on_recovery=recoveries.append,
        )
        subscribers.append(sub)
        app = App(sub)
        await wait_for(lambda: sub.state == "connected", 5, message="connected")
        async with AsyncPublisher(p.http_url) as pub:
            await app.barrier(pub, "r")
        assert recoveries and recoveries[0].recovered is False
        assert recoveries[0].resync


async def test_frames_posted_to_a_vanished_stream_drop_it_and_it_recovers(
    subscribers: list[Subscriber], pod_factory: PodFactory, vhost: Vhost
) -> None:
    """A POST that fails (here a session token that is not the stream's: 403) ends the
    stream with 1006, since its frames' answers would never come; the subscriber
    reconnects on a new stream and its subscription goes through."""
    (pod,) = pod_factory(1, "cstream-post", amqp_url=vhost.amqp_url, start=False)
    try:
        await asyncio.to_thread(pod_factory.start, [pod])
        user = f"p-{uuid.uuid4().hex[:6]}"
        sub = Subscriber(pod.ws_url, user=user, transports=["sse"], backoff=Backoff(**FAST))
        subscribers.append(sub)
        app = App(sub)
        await wait_for(lambda: sub.state == "connected", 10, message="connected")
        link = sub._ws
        assert isinstance(link, StreamLink) and link.session
        link.session = link.session[:-4] + "AAAA"
        await sub.subscribe("news.x")
        await wait_for(lambda: sub.stats.connections == 2, 10, message="the reconnect")
        assert 1006 in sub.stats.closes
        await wait_for(lambda: sub.subscribed == ["news.x"], 10, message="subscribed")
        async with AsyncPublisher(pod.http_url) as pub:
            sent = [await pub.publish(1, channel="news.x"), await pub.publish(2, user=user)]
            await app.wait(sent)
    finally:
        pod.kill()
