"""Channel namespaces (``<namespace>:<rest>``): their options, validated at start and kept by
real pods over RabbitMQ.

A namespace without history recovers nothing and says so; one with a short history reaches
no further back; client publishing, the subscribe rule and a rate are per namespace; a
channel of no declared namespace is refused, never read as a plain name.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import orjson
import pytest

from clarion.config import Settings
from clarion.namespaces import HISTORY_OFF, Namespace, Namespaces

from .support import InProcessPod, Vhost, wait_for
from .wsclient import Client

pytestmark = pytest.mark.timeout(60)

SECRET = "namespaces-secret-0123456789abcdef0123"

NAMESPACES = {
    "live": {"history": False},
    "short": {"history_seconds": 1},
    "chat": {"publish": True, "rate": 2},
    "doc": {"subscribe": "token"},
    "quiet": {"presence": False},
}


# -- the option's parser, as a class --------------------------------------------------


@pytest.mark.parametrize(
    "raw,words",
    [
        ("{", "not JSON"),
        ("[]", "must be a JSON object"),
        ('{"orders": 5}', "namespace 'orders': options must be an object"),
        ('{"orders": {"histroy": false}}', "namespace 'orders': unknown option 'histroy'"),
        ('{"orders": {"history": "no"}}', "namespace 'orders': option 'history' must be true or"),
        ('{"orders": {"history": 0}}', "option 'history' must be true or false, not 0"),
        ('{"orders": {"history": null}}', "option 'history' must be true or false, not null"),
        ('{"orders": {"presence": "yes"}}', "option 'presence' must be true or false"),
        ('{"orders": {"publish": 1}}', "option 'publish' must be true or false"),
        ('{"orders": {"join_leave": "on"}}', "option 'join_leave' must be true or false"),
        ('{"orders": {"history_seconds": -1}}', "option 'history_seconds' must be a number >= 0"),
        ('{"orders": {"history_seconds": "1h"}}', "option 'history_seconds' must be a number"),
        ('{"orders": {"history_seconds": true}}', "option 'history_seconds' must be a number"),
        ('{"orders": {"rate": -0.5}}', "option 'rate' must be a number >= 0"),
        ('{"orders": {"rate": [1]}}', "option 'rate' must be a number >= 0"),
        ('{"orders": {"subscribe": "nobody"}}', "option 'subscribe' must be one of rights, token"),
        ('{"orders": {"subscribe": null}}', "option 'subscribe' must be one of"),
        ('{"a:b": {}}', "namespace 'a:b': a name has no ':'"),
        ('{"a*": {}}', "namespace 'a*': a name has no"),
        ('{" a": {}}', "namespace ' a': a name has no"),
        ('{"' + "n" * 200 + '": {}}', "is not a namespace name"),
    ],
)
def test_a_bad_namespaces_value_names_the_namespace_and_the_option(raw: str, words: str) -> None:
    with pytest.raises(ValueError) as caught:
        Namespaces.parse(raw)
    assert words in str(caught.value)
    assert str(caught.value).startswith("--namespaces")
    with pytest.raises(ValueError, match="--namespaces"):
        Settings(auth="none", namespaces=raw).validate()


def test_good_values_and_the_plain_names_options() -> None:
    ns = Namespaces.parse(orjson.dumps({**NAMESPACES, "": {"history_seconds": 600}}).decode())
    assert ns.of("live:x").history is False
    assert ns.of("chat:room").publish is True and ns.of("chat:room").rate == 2.0
    assert ns.of("news") == Namespace(name="", history_seconds=600.0)
    assert ns.of("doc:a:b").subscribe == "token"  # the first ':' separates
    assert Namespaces.parse("").of("a:b") == Namespace()
    assert Namespaces.parse("  ").declared == {}


@pytest.mark.parametrize(
    "channel,refused",
    [
        ("news", None),
        ("live:x", None),
        ("doc:a:b", None),
        ("nosuch:x", "unknown namespace 'nosuch'"),
        ("live:", "nothing after 'live:'"),
        (":x", "unknown namespace ''"),
        ("Live:x", "unknown namespace 'Live'"),
    ],
)
def test_a_channel_of_no_declared_namespace_is_refused(channel: str, refused: str | None) -> None:
    ns = Namespaces.parse(orjson.dumps(NAMESPACES).decode())
    reason = ns.refusal(channel)
    assert reason == refused if refused is None else refused in (reason or "")
    # Without namespaces a ':' is an ordinary character, as before.
    assert Namespaces.parse("").refusal(channel) is None


def test_the_rules_that_need_a_backend_or_tokens_are_checked_at_start() -> None:
    with pytest.raises(ValueError, match="subscribe=proxy needs --subscribe-proxy"):
        Settings(auth="none", namespaces='{"doc": {"subscribe": "proxy"}}').validate()
    with pytest.raises(ValueError, match="subscribe=token needs --auth jwt"):
        Settings(auth="none", namespaces='{"doc": {"subscribe": "token"}}').validate()


def test_clarion_serve_refuses_to_start_with_a_bad_namespace() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "clarion", "serve", "--auth", "none"],
        env={"CLARION_NAMESPACES": '{"orders": {"history": "no"}}', "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode != 0
    assert "namespace 'orders': option 'history' must be true or false" in proc.stderr


# -- on real pods ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def pod(module_vhost: Vhost) -> Iterator[InProcessPod]:
    with InProcessPod(
        amqp_url=module_vhost.amqp_url,
        auth="jwt",
        jwt_secret=SECRET,
        public_api=True,
        namespaces=orjson.dumps(NAMESPACES).decode(),
    ) as p:
        yield p


def token(user: str, **claims: Any) -> str:
    return jwt.encode({"sub": user, "exp": int(time.time()) + 120, **claims}, SECRET)


async def connect(pod: InProcessPod, user: str = "ann") -> Client:
    c = await Client.connect(f"{pod.ws_url}?token={token(user, channels=['**'])}")
    await c.wait_welcome()
    return c


async def publish(pod: InProcessPod, channel: str, data: Any) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.post(f"{pod.http_url}/api/publish", json={"channel": channel, "data": data})
        assert r.status_code == 202, r.text


def error_for(channel: str) -> Any:
    return lambda f: (
        isinstance(f, dict) and f.get("type") == "error" and f.get("channel") == channel
    )


async def subscribed_since(pod: InProcessPod, channel: str) -> tuple[dict[str, Any], Client]:
    """Subscribe, note the position, let two messages pass unseen, come back with since."""
    c = await connect(pod)
    await c.send({"type": "subscribe", "channel": channel})
    position = (await c.wait_reply("subscribed"))["position"]
    await c.close()
    await publish(pod, channel, "missed 1")
    await publish(pod, channel, "missed 2")
    back = await connect(pod)
    await back.send({"type": "subscribe", "channel": channel, "since": position})
    return await back.wait_reply("subscribed"), back


async def test_a_namespace_without_history_recovers_nothing_and_says_so(
    pod: InProcessPod,
) -> None:
    answer, c = await subscribed_since(pod, "live:scores")
    assert answer["recovered"] is False and answer["reason"] == HISTORY_OFF
    assert answer["missed"] == 0
    await publish(pod, "live:scores", "live again")
    await c.wait_data("live again")
    assert "missed 1" not in c.data() and "missed 2" not in c.data()
    labels = {"scope": "subscribe", "result": HISTORY_OFF}
    assert pod.metric("clarion_replays_total", labels) >= 1
    await c.close()
    # A plain name keeps its history, as before.
    answer, c = await subscribed_since(pod, "news")
    assert answer["recovered"] is True and answer["missed"] == 2
    await wait_for(lambda: c.data()[-2:] == ["missed 1", "missed 2"], 5)
    await c.close()


async def test_a_short_history_reaches_no_further_back(pod: InProcessPod) -> None:
    c = await connect(pod)
    await c.send({"type": "subscribe", "channel": "short:x"})
    position = (await c.wait_reply("subscribed"))["position"]
    await c.close()
    await publish(pod, "short:x", "too old")
    await wait_for(lambda: time.time() * 1000 > int(position[:8] + position[9:13], 16) + 1500, 5)
    back = await connect(pod)
    await back.send({"type": "subscribe", "channel": "short:x", "since": position})
    answer = await back.wait_reply("subscribed")
    assert answer["recovered"] is False and answer["reason"] == "expired"
    assert "too old" not in back.data()
    await back.close()


async def test_client_publishing_is_per_namespace(pod: InProcessPod) -> None:
    c = await connect(pod)
    await c.send({"type": "subscribe", "channel": "chat:room"})
    await c.wait_reply("subscribed")
    await c.send({"type": "publish", "channel": "chat:room", "data": "hello"})
    await c.wait_reply("published")
    await c.wait_data("hello")
    await c.send({"type": "publish", "channel": "news", "data": "no"})
    error = await c.wait_frame(lambda f: isinstance(f, dict) and f.get("type") == "error")
    assert error["code"] == "forbidden"
    await c.close()


async def test_a_namespaces_rate_refuses_frames_about_its_channels(pod: InProcessPod) -> None:
    c = await connect(pod)
    for i in range(10):
        await c.send({"type": "publish", "channel": "chat:fast", "data": i})
    await c.wait_frame(error_for("chat:fast"))
    limited = [f for f in c.of_type("error") if f.get("code") == "rate_limited"]
    assert limited and all(f["channel"] == "chat:fast" for f in limited)
    assert "'chat'" in limited[0]["message"]
    # Other channels are not held back by it.
    await c.send({"type": "subscribe", "channel": "news"})
    await c.wait_reply("subscribed")
    assert pod.metric("clarion_limit_hits_total", {"limit": "namespace_rate"}) >= 1
    await c.close()


async def test_a_token_namespace_needs_a_subscription_token_whatever_the_rights(
    pod: InProcessPod,
) -> None:
    c = await connect(pod)  # its channels claim is "**": everything
    await c.send({"type": "subscribe", "channel": "doc:7"})
    error = await c.wait_frame(error_for("doc:7"))
    assert error["code"] == "forbidden" and "needs a subscription token" in error["message"]
    sub = jwt.encode({"sub": "ann", "channel": "doc:7", "exp": int(time.time()) + 60}, SECRET)
    await c.send({"type": "subscribe", "channel": "doc:7", "token": sub})
    assert (await c.wait_reply("subscribed"))["channel"] == "doc:7"
    await c.close()


@pytest.mark.parametrize("channel", ["nosuch:x", "live:", ":x"])
async def test_a_channel_of_no_namespace_is_refused_on_subscribe_and_publish(
    pod: InProcessPod, channel: str
) -> None:
    c = await connect(pod)
    await c.send({"type": "subscribe", "channel": channel})
    error = await c.wait_frame(error_for(channel))
    assert error["code"] == "bad_channel"
    await c.send({"type": "publish", "channel": channel, "data": 1})
    await wait_for(lambda: len([f for f in c.of_type("error") if f.get("channel") == channel]) == 2)
    assert c.of_type("error")[-1]["code"] == "bad_channel"
    await c.send({"type": "ping"})
    await c.wait_reply("pong")
    await c.close()


@pytest.mark.parametrize(
    "path", ["/api/presence?channel=quiet:room", "/api/presence/stats?channel=quiet:room"]
)
async def test_a_namespace_without_presence_answers_no_presence_query(
    pod: InProcessPod, path: str
) -> None:
    c = await connect(pod)
    await c.send({"type": "subscribe", "channel": "quiet:room"})
    await c.wait_reply("subscribed")
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.get(f"{pod.http_url}{path}")
        assert r.status_code == 403 and r.json()["error"] == "presence_off"
        assert "'quiet'" in r.json()["message"]
        r = await http.get(f"{pod.http_url}/api/presence?channel=nosuch:room")
        assert r.status_code == 400 and r.json()["error"] == "bad_channel"
        r = await http.get(f"{pod.http_url}/api/presence?channel=news")
        assert r.status_code == 200
    await c.close()


@pytest.mark.parametrize(
    "global_on,namespaces,heard,unheard",
    [
        (False, {"room": {"join_leave": True}}, "room:1", "news"),
        (True, {"muted": {"join_leave": False}}, "news", "muted:1"),
    ],
    ids=["on-in-a-namespace", "off-in-a-namespace"],
)
async def test_join_and_leave_frames_per_namespace(
    vhost: Vhost, global_on: bool, namespaces: dict[str, Any], heard: str, unheard: str
) -> None:
    # A vhost of its own: the module's pod, with other namespaces, shares the cluster's
    # occupancy (a gateway's pods share one configuration).
    async with InProcessPod(
        amqp_url=vhost.amqp_url,
        auth="none",
        join_leave=global_on,
        namespaces=orjson.dumps(namespaces).decode(),
    ) as p:
        carol = await Client.connect(f"{p.ws_url}?user=carol")
        dave = await Client.connect(f"{p.ws_url}?user=dave")
        for c in (carol, dave):
            await c.wait_welcome()
            for channel in (unheard, heard):  # the unheard one first: its join would come first
                await c.send({"type": "subscribe", "channel": channel})
            await c.wait_reply("subscribed", 2)
        frame = await carol.wait_reply("join")
        assert frame == {"type": "join", "channel": heard, "user": "dave"}
        await dave.close()
        assert (await carol.wait_reply("leave"))["channel"] == heard
        assert all(f["channel"] == heard for f in carol.of_type("join") + carol.of_type("leave"))
        await carol.close()
