"""Subscription tokens and the subscribe proxy, on real pods over RabbitMQ.

A channel the connection's rights (its token's ``channels``) do not cover is let
in by a subscription token (a JWT naming the user and the channel, signed with
the gateway's key) in the ``subscribe`` frame, or by the backend (the subscribe
proxy, the real HTTP backend of test_connect_proxy). Whatever refuses it, the
client gets an error frame naming the channel and the socket stays open; the
proxy fails closed.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import orjson
import pytest

from .support import InProcessPod, PodFactory, Vhost, wait_for
from .test_connect_proxy import BAD_ANSWERS, JWT_SECRET, PROXY_SECRET, Backend
from .wsclient import Client

pytestmark = pytest.mark.timeout(60)


class SubscribeBackend(Backend):
    """Answers ``/subscribe`` by the channel's name after ``doc.``: ``ok-*`` yes, ``no`` a
    403, ``deny`` a deny answer, a name of BAD_ANSWERS that bad answer, ``hangup``."""

    def answer(self, path: str, req: dict[str, Any], signed: bool) -> tuple[int, bytes, float]:
        if path != "/subscribe" or not signed:
            return super().answer(path, req, signed)
        name = req["channel"].removeprefix("doc.")
        if name.startswith("ok"):
            return 200, b'{"allow": true}', 0
        if name == "no":
            return 403, b'{"reason": "not your document"}', 0
        if name == "deny":
            return 200, b'{"deny": true, "reason": "archived"}', 0
        if name == "hangup":
            return -1, b"", 0
        if name in BAD_ANSWERS:
            return BAD_ANSWERS[name]
        extra = {
            "allow-false": (200, b'{"allow": false}', 0),
            "allow-string": (200, b'{"allow": "yes"}', 0),
            "allow-extra": (200, b'{"allow": true, "user": "x"}', 0),
            "allow-list": (200, b"[true]", 0),
        }
        return extra.get(name, (403, b"", 0))

    def subscribes(self) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if r["path"] == "/subscribe"]


#: Answers of the subscribe proxy that are no answer: the subscription fails closed.
UNUSABLE = [
    *sorted(set(BAD_ANSWERS) - {"deny-false", "deny-extra"}),
    "deny-false",
    "deny-extra",
    "hangup",
    "allow-false",
    "allow-string",
    "allow-extra",
    "allow-list",
]


@pytest.fixture(scope="module")
def backend() -> Iterator[SubscribeBackend]:
    b = SubscribeBackend()
    yield b
    b.close()


def subscribe_url(backend: Backend) -> str:
    return backend.url.replace("/connect", "/subscribe")


@pytest.fixture(scope="module")
def pod(backend: SubscribeBackend, module_vhost: Vhost) -> Iterator[InProcessPod]:
    with InProcessPod(
        amqp_url=module_vhost.amqp_url,
        auth="jwt",
        jwt_secret=JWT_SECRET,
        public_api=True,
        subscribe_proxy=subscribe_url(backend),
        proxy_secret=PROXY_SECRET,
        proxy_timeout=0.5,
        refresh_grace=0.5,
    ) as p:
        yield p


def token(user: str, ttl: float = 60, **claims: Any) -> str:
    return jwt.encode({"sub": user, "exp": int(time.time() + ttl), **claims}, JWT_SECRET)


def sub_token(user: str, channel: str, ttl: float = 60, key: str = JWT_SECRET) -> str:
    return jwt.encode({"sub": user, "channel": channel, "exp": int(time.time() + ttl)}, key)


async def connect(pod: InProcessPod, user: str) -> Client:
    c = await Client.connect(f"{pod.ws_url}?token={token(user, channels=['public.*'])}")
    await c.wait_welcome()
    return c


def is_error(channel: str) -> Any:
    return lambda f: (
        isinstance(f, dict) and f.get("type") == "error" and f.get("channel") == channel
    )


async def refused(c: Client, frame: dict[str, Any]) -> dict[str, Any]:
    """Send ``frame``; its error frame, once the socket showed it is still open (a pong)."""
    await c.send(frame)
    error = await c.wait_frame(is_error(frame["channel"]), 5)
    pongs = len(c.of_type("pong"))
    await c.send({"type": "ping"})
    await c.wait_reply("pong", pongs + 1)
    assert not c.closed
    return error


async def publish(pod: InProcessPod, channel: str, data: Any) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.post(f"{pod.http_url}/api/publish", json={"channel": channel, "data": data})
        assert r.status_code == 202, r.text


def channel() -> str:
    return f"doc.{uuid.uuid4().hex[:8]}"


# -- subscription tokens ------------------------------------------------------------


async def test_a_subscription_token_lets_its_user_into_its_channel(pod: InProcessPod) -> None:
    c = await connect(pod, "alice")
    ch = channel()
    await c.send({"type": "subscribe", "channel": ch, "token": sub_token("alice", ch)})
    assert (await c.wait_reply("subscribed"))["channel"] == ch
    await publish(pod, ch, "for alice")
    await c.wait_data("for alice")
    await c.close()


@pytest.mark.parametrize(
    "make,code,words",
    [
        (lambda ch: sub_token("alice", ch, key="k" * 40), "forbidden", "Signature"),
        (lambda ch: sub_token("mallory", ch), "forbidden", "another user"),
        (lambda ch: sub_token("alice", ch + "x"), "forbidden", "another channel"),
        (lambda ch: token("alice", channels=[ch]), "forbidden", "not a subscription token"),
        (lambda ch: sub_token("alice", ch, ttl=-30), "token_expired", "expired"),
        (lambda ch: "not-a-jwt", "forbidden", "invalid token"),
        (lambda ch: "a.b.c", "forbidden", "invalid token"),
    ],
    ids=["forged", "other-user", "other-channel", "connection-token", "expired", "junk", "dots"],
)
async def test_a_wrong_subscription_token_is_refused_and_the_socket_stays(
    pod: InProcessPod, backend: SubscribeBackend, make: Any, code: str, words: str
) -> None:
    c = await connect(pod, "alice")
    ch = channel()
    before = len(backend.subscribes())
    error = await refused(c, {"type": "subscribe", "channel": ch, "token": make(ch)})
    assert error["code"] == code and words in error["message"], error
    # A token was given and refused: the proxy is not asked behind its back.
    assert len(backend.subscribes()) == before
    await publish(pod, ch, "not for alice")
    await c.send({"type": "ping"})
    await c.wait_reply("pong", len(c.of_type("pong")) + 1)
    assert "not for alice" not in c.data()
    await c.close()


@pytest.mark.parametrize(
    "value",
    [5, None, [], {}, True, "", "   ", "x" * (16 * 1024 + 1)],
    ids=["number", "null", "list", "object", "bool", "empty", "blank", "too-long"],
)
async def test_garbage_in_a_subscribe_frames_token_is_refused(
    pod: InProcessPod, value: Any
) -> None:
    c = await connect(pod, "alice")
    ch = channel()
    error = await refused(c, {"type": "subscribe", "channel": ch, "token": value})
    assert error["code"] == "bad_field" and "'token'" in error["message"]
    await c.close()


async def test_the_connection_token_cannot_open_with_a_subscription_token(
    pod: InProcessPod,
) -> None:
    c = await Client.connect(f"{pod.ws_url}?token={sub_token('alice', 'doc.x')}")
    assert await c.wait_closed(5) == 4500
    assert "subscription token" in c.close_reason


async def test_a_subscription_token_is_refreshed_in_band(pod: InProcessPod) -> None:
    c = await connect(pod, "bob")
    ch = channel()
    await c.send({"type": "subscribe", "channel": ch, "token": sub_token("bob", ch, ttl=2)})
    await c.wait_reply("subscribed")
    await c.send({"type": "refresh", "channel": ch, "token": sub_token("bob", ch, ttl=60)})
    refreshed = await c.wait_reply("refreshed")
    assert refreshed["channel"] == ch and refreshed["expire_at"] > time.time() + 30
    # Past the first token's exp and the grace, the subscription is still there.
    await wait_for(lambda: time.time() > refreshed["expire_at"] - 57 + 0.6, 5)
    await publish(pod, ch, "still here")
    await c.wait_data("still here")
    assert not c.of_type("unsubscribed")
    # A wrong refresh changes nothing (another channel's token, another user's).
    await c.send({"type": "refresh", "channel": ch, "token": sub_token("bob", ch + "x")})
    error = await c.wait_frame(is_error(ch))
    assert error["code"] == "bad_token"
    await c.send(
        {"type": "refresh", "channel": "doc.never", "token": sub_token("bob", "doc.never")}
    )
    assert (await c.wait_frame(is_error("doc.never")))["code"] == "not_subscribed"
    assert pod.metric("clarion_refreshes_total", {"result": "subscription_ok"}) >= 1
    await c.close()


async def test_an_unrefreshed_subscription_token_ends_that_subscription(pod: InProcessPod) -> None:
    c = await connect(pod, "carol")
    ch = channel()
    await c.send({"type": "subscribe", "channel": ch, "token": sub_token("carol", ch, ttl=1)})
    await c.wait_reply("subscribed")
    gone = await c.wait_reply("unsubscribed", timeout=5)
    assert gone["channel"] == ch and gone["reason"] == "subscription_expired"
    await publish(pod, ch, "after the end")
    await c.send({"type": "ping"})
    await c.wait_reply("pong")
    assert "after the end" not in c.data() and not c.closed
    refused_by = {"reason": "subscription_expired"}
    assert pod.metric("clarion_subscriptions_refused_total", refused_by) >= 1
    await c.close()


async def test_a_refresh_of_the_connections_rights_keeps_token_subscriptions(
    pod: InProcessPod,
) -> None:
    c = await connect(pod, "dave")
    ch = channel()
    await c.send({"type": "subscribe", "channel": ch, "token": sub_token("dave", ch)})
    await c.wait_reply("subscribed")
    await c.send({"type": "subscribe", "channel": "public.news"})
    await c.wait_reply("subscribed", 2)
    await c.send({"type": "refresh", "token": token("dave", channels=[])})
    gone = await c.wait_reply("unsubscribed")
    assert gone["channel"] == "public.news" and gone["reason"] == "revoked"
    await publish(pod, ch, "kept")
    await c.wait_data("kept")
    assert len(c.of_type("unsubscribed")) == 1
    await c.close()


# -- the subscribe proxy ------------------------------------------------------------


async def test_the_subscribe_proxy_lets_in_what_the_rights_do_not_cover(
    pod: InProcessPod, backend: SubscribeBackend
) -> None:
    c = await connect(pod, "erin")
    before = len(backend.subscribes())
    await c.send({"type": "subscribe", "channel": "public.x"})  # the rights: no call
    await c.wait_reply("subscribed")
    assert len(backend.subscribes()) == before
    await c.send({"type": "subscribe", "channel": "doc.ok-1"})
    assert (await c.wait_reply("subscribed", 2))["channel"] == "doc.ok-1"
    req = backend.subscribes()[-1]
    assert req["signed"] and req["proxy"] == "subscribe"
    body = req["body"]
    assert body["proxy"] == "subscribe" and body["user"] == "erin"
    assert body["channel"] == "doc.ok-1" and body["conn"] and body["transport"] == "websocket"
    await publish(pod, "doc.ok-1", "from the backend's yes")
    await c.wait_data("from the backend's yes")
    labels = {"proxy": "subscribe", "result": "allow"}
    assert pod.metric("clarion_proxy_requests_total", labels) >= 1
    await c.close()


@pytest.mark.parametrize(
    "name,message", [("no", "refused: not your document"), ("deny", "refused: archived")]
)
async def test_the_subscribe_proxys_no_is_a_clear_error_and_the_socket_stays(
    pod: InProcessPod, name: str, message: str
) -> None:
    c = await connect(pod, "frank")
    error = await refused(c, {"type": "subscribe", "channel": f"doc.{name}"})
    assert (error["code"], error["message"]) == ("forbidden", message)
    assert pod.metric("clarion_subscriptions_refused_total", {"reason": "proxy_denied"}) >= 1
    await c.close()


@pytest.mark.parametrize("name", UNUSABLE)
async def test_no_usable_answer_fails_closed_and_the_socket_stays(
    pod: InProcessPod, name: str
) -> None:
    c = await connect(pod, "gina")
    started = time.monotonic()
    error = await refused(c, {"type": "subscribe", "channel": f"doc.{name}"})
    assert error["code"] == "unavailable", error
    assert error["message"] == "subscribe backend unavailable: try again later"
    assert time.monotonic() - started < 2.5  # the timeout (0.5 s), not a slow backend's 3 s
    await publish(pod, f"doc.{name}", "nothing")
    await c.send({"type": "ping"})
    await c.wait_reply("pong", len(c.of_type("pong")) + 1)
    assert "nothing" not in c.data()
    await c.close()


async def test_a_subscribe_proxy_that_is_down_fails_closed(module_vhost: Vhost) -> None:
    from testkit.net import free_port

    port = free_port("127.0.0.1")  # nothing listens there
    async with InProcessPod(
        amqp_url=module_vhost.amqp_url,
        auth="jwt",
        jwt_secret=JWT_SECRET,
        public_api=True,
        subscribe_proxy=f"http://127.0.0.1:{port}/subscribe",
        proxy_secret=PROXY_SECRET,
    ) as p:
        c = await connect(p, "hank")
        error = await refused(c, {"type": "subscribe", "channel": "doc.ok"})
        assert error["code"] == "unavailable"
        labels = {"reason": "proxy_unavailable"}
        assert p.metric("clarion_subscriptions_refused_total", labels) == 1
        await c.close()


async def test_without_a_proxy_or_token_an_uncovered_channel_is_forbidden(
    module_vhost: Vhost,
) -> None:
    async with InProcessPod(
        amqp_url=module_vhost.amqp_url, auth="jwt", jwt_secret=JWT_SECRET, public_api=True
    ) as p:
        c = await connect(p, "ivy")
        error = await refused(c, {"type": "subscribe", "channel": "doc.ok"})
        assert error["code"] == "forbidden"
        await c.close()


def test_a_subscribe_answer_is_exactly_allow_or_deny() -> None:
    from clarion.proxy import Denied, parse_subscribe_answer

    assert parse_subscribe_answer({"allow": True}) is True
    with pytest.raises(Denied):
        parse_subscribe_answer({"deny": True, "reason": "x"})
    for bad in ({"allow": 1}, {"allow": True, "x": 1}, {}, [], "allow", None, {"deny": 1}):
        with pytest.raises(ValueError):
            parse_subscribe_answer(orjson.loads(orjson.dumps(bad)))


# -- the Python Subscriber ----------------------------------------------------------


async def test_the_python_subscriber_renews_a_subscription_token_in_band(
    pod: InProcessPod,
) -> None:
    from clarion_client import Message, Subscriber

    ch = channel()
    asked: list[str] = []

    def get_token(name: str) -> str:
        asked.append(name)
        return sub_token("zoe", name, ttl=3)

    got: list[Message] = []
    sub = Subscriber(pod.ws_url, token=token("zoe", channels=["public.*"]), refresh_margin=1.0)

    async def read() -> None:
        async for m in sub:
            got.append(m)

    reader = asyncio.create_task(read())
    try:
        await wait_for(lambda: sub.state == "connected", 10)
        await sub.subscribe(ch, get_token=get_token)
        await wait_for(lambda: sub.subscribed == [ch], 5)
        # Three 3-second tokens later the subscription is the same one on the same socket.
        await wait_for(lambda: len(asked) >= 4, 10)
        await publish(pod, ch, "after three renewals")
        await wait_for(lambda: any(m.data == "after three renewals" for m in got), 5)
        assert sub.stats.connections == 1 and asked == [ch] * len(asked)
        assert pod.metric("clarion_refreshes_total", {"result": "subscription_ok"}) >= 3
        assert sub.subscribed == [ch]
    finally:
        await sub.close()
        reader.cancel()


async def test_the_python_subscriber_sends_a_given_subscription_token(pod: InProcessPod) -> None:
    from clarion_client import Subscriber

    ch = channel()
    errors: list[tuple[str, str]] = []
    async with Subscriber(
        pod.ws_url, token=token("yan", channels=[]), on_error=lambda *e: errors.append(e)
    ) as sub:
        await wait_for(lambda: sub.state == "connected", 10)
        await sub.subscribe(ch, token=sub_token("yan", ch))
        await sub.subscribe(ch + "x", token=sub_token("yan", ch))  # another channel's
        await wait_for(lambda: sub.subscribed == [ch], 5)
        await wait_for(lambda: errors, 5)
        assert errors[0][0] == "forbidden" and "another channel" in errors[0][1]


def test_no_subscription_token_or_secret_reaches_the_log(
    backend: SubscribeBackend, pod_factory: PodFactory
) -> None:
    """A real ``clarion serve`` at debug level; every token it was handed is grepped for."""
    (pod,) = pod_factory(
        1,
        "sub-logs",
        args=[
            "--jwt-secret", JWT_SECRET, "--public-api",
            "--subscribe-proxy", subscribe_url(backend), "--proxy-secret", PROXY_SECRET,
            "--proxy-timeout", "0.5", "--log-level", "debug",
        ],
    )  # fmt: skip
    good = sub_token("alice", "doc.a")
    others = [
        sub_token("mallory", "doc.a"),
        sub_token("alice", "doc.a", key="k" * 40),
        sub_token("alice", "doc.a", ttl=-30),
    ]

    async def exercise() -> None:
        c = await Client.connect(f"{pod.ws_url}?token={token('alice', channels=['public.*'])}")
        await c.wait_welcome()
        await c.send({"type": "subscribe", "channel": "doc.a", "token": good})
        await c.wait_reply("subscribed")
        for tok in others:
            await c.send({"type": "refresh", "channel": "doc.a", "token": tok})
            await c.send({"type": "subscribe", "channel": "doc.b", "token": tok})
        for name in ("doc.no", "doc.500", "doc.garbage", "doc.slow"):
            await c.send({"type": "subscribe", "channel": name})
        await c.wait_frame(is_error("doc.slow"), 5)
        await c.close()

    try:
        asyncio.run(exercise())
    finally:
        pod.stop()
    log = pod.log_path.read_text()
    assert "subscribe proxy" in log  # the failures are there, the secrets are not
    for secret in (PROXY_SECRET, JWT_SECRET, good, *others):
        assert secret not in log


async def test_an_http_stream_subscribes_with_a_token_and_through_the_proxy(
    pod: InProcessPod, backend: SubscribeBackend
) -> None:
    """A stream's subscribe frames are posted to /emulation and decided the same way."""
    lines: list[Any] = []
    ch = channel()
    url = f"{pod.http_url}/stream?token={token('nia', channels=['public.*'])}"
    async with httpx.AsyncClient(timeout=10) as http:
        async with http.stream("GET", url) as resp:
            assert resp.status_code == 200

            async def read() -> None:
                async for line in resp.aiter_lines():
                    if line.strip():
                        lines.append(orjson.loads(line))

            def typed(ftype: str) -> list[dict[str, Any]]:
                return [f for f in lines if isinstance(f, dict) and f.get("type") == ftype]

            reader = asyncio.create_task(read())
            try:
                (welcome,) = await wait_for(lambda: typed("welcome"), 5)
                frames = [
                    {"type": "subscribe", "channel": ch, "token": sub_token("nia", ch)},
                    {"type": "subscribe", "channel": "doc.ok-stream"},
                    {"type": "subscribe", "channel": "doc.no"},
                ]
                r = await http.post(
                    f"{pod.http_url}/emulation",
                    json={"session": welcome["session"], "frames": frames},
                )
                assert r.status_code == 202, r.text
                await wait_for(lambda: len(typed("subscribed")) == 2 and typed("error"), 5)
                assert {f["channel"] for f in typed("subscribed")} == {ch, "doc.ok-stream"}
                (error,) = typed("error")
                assert error["channel"] == "doc.no" and error["code"] == "forbidden"
                assert backend.subscribes()[-1]["body"]["transport"] == "http_stream"
                await publish(pod, ch, "over the stream")
                await wait_for(
                    lambda: any(f.get("data") == "over the stream" for f in typed("message")), 5
                )
            finally:
                reader.cancel()
