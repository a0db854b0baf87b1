"""In-band token refresh (``{"type":"refresh","token":...}``) against real pods.

The same checks as at connect (signature, ``exp``, ``aud``, and the connection's own
``sub``); the new token's rights replace the old ones and a channel they no longer
allow is unsubscribed with a reason; 4001 comes only when no valid token arrived
before ``exp`` plus ``--refresh-grace``. The same works on an HTTP stream, its frames
posted to ``POST /emulation``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import orjson
import pytest

from clarion.protocol import MAX_TOKEN_LENGTH

from .support import InProcessPod, Vhost, wait_for
from .wsclient import Client

pytestmark = pytest.mark.timeout(60)

SECRET = "refresh-secret-0123456789abcdef0123"
API_KEY = "refresh-api-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def token(sub: str = "u1", secret: str = SECRET, ttl: float = 300, **claims: Any) -> str:
    claims.setdefault("exp", int(time.time() + ttl))
    claims.setdefault("channels", ["news", "orders.*"])
    body = {"sub": sub, **{k: v for k, v in claims.items() if v is not None}}
    return jwt.encode(body, secret, "HS256")


@pytest.fixture(scope="module")
def pod() -> Iterator[InProcessPod]:
    with InProcessPod(
        auth="jwt", jwt_secret=SECRET, jwt_audience="push", api_keys=[API_KEY], refresh_grace=0.0
    ) as p:
        yield p


async def connect(pod: InProcessPod, tok: str) -> Client:
    c = await Client.connect(f"{pod.ws_url}?token={tok}")
    await c.wait_welcome()
    return c


def answers(c: Client) -> list[dict[str, Any]]:
    return [f for f in c.frames if isinstance(f, dict) and f.get("type") in ("refreshed", "error")]


async def refresh(c: Client, frame: Any) -> dict[str, Any]:
    before = len(answers(c))
    await c.send(frame)
    found = await c.until(lambda: len(answers(c)) > before and answers(c)[before], 5, "answer")
    return dict(found)


async def test_a_refresh_extends_the_connection_past_the_first_tokens_exp(
    pod: InProcessPod,
) -> None:
    c = await connect(pod, token(ttl=1.5, aud="push"))
    exp = int(time.time() + 30)
    answer = await refresh(c, {"type": "refresh", "token": token(exp=exp, aud="push")})
    assert answer == {"type": "refreshed", "expire_at": exp}
    await asyncio.sleep(0)  # the old exp passes below while the socket stays open
    await wait_for(lambda: time.time() > exp - 28, 5, message="the first token's exp")
    await c.send({"type": "ping"})
    await c.wait_reply("pong")
    assert not c.closed
    await c.close()


async def test_without_a_refresh_the_socket_closes_4001_at_exp(pod: InProcessPod) -> None:
    c = await connect(pod, token(ttl=1.2, aud="push"))
    assert await c.wait_closed(5) == 4001
    assert c.close_reason == "token expired"


async def test_a_refused_refresh_changes_nothing_and_exp_still_closes(pod: InProcessPod) -> None:
    c = await connect(pod, token(ttl=1.5, aud="push"))
    answer = await refresh(c, {"type": "refresh", "token": token("someone-else", aud="push")})
    assert answer["code"] == "bad_token" and "another user" in answer["message"]
    assert await c.wait_closed(5) == 4001


def bad_tokens() -> list[tuple[str, Any, str]]:
    """Refresh frames that must be refused, as a class: (id, frame, error code)."""
    good = token(aud="push")
    head, body, sig = good.split(".")
    return [
        ("wrong-sub", {"type": "refresh", "token": token("u2", aud="push")}, "bad_token"),
        (
            "expired",
            {"type": "refresh", "token": token(exp=int(time.time()) - 5, aud="push")},
            "token_expired",
        ),
        ("wrong-aud", {"type": "refresh", "token": token(aud="other")}, "bad_token"),
        ("no-aud", {"type": "refresh", "token": token()}, "bad_token"),
        (
            "bad-signature",
            {"type": "refresh", "token": token(secret="x" * 40, aud="push")},
            "bad_token",
        ),
        ("tampered", {"type": "refresh", "token": f"{head}.{body}x.{sig}"}, "bad_token"),
        (
            "alg-none",
            {
                "type": "refresh",
                "token": jwt.encode(
                    {"sub": "u1", "exp": int(time.time()) + 60, "aud": "push"},
                    None,  # type: ignore[arg-type]
                    "none",
                ),
            },
            "bad_token",
        ),
        ("no-exp", {"type": "refresh", "token": token(exp=None, aud="push")}, "bad_token"),
        ("garbage", {"type": "refresh", "token": "not-a-jwt"}, "bad_token"),
        ("missing", {"type": "refresh"}, "missing_field"),
        ("number", {"type": "refresh", "token": 42}, "bad_field"),
        ("null", {"type": "refresh", "token": None}, "bad_field"),
        ("list", {"type": "refresh", "token": [good]}, "bad_field"),
        ("empty", {"type": "refresh", "token": ""}, "bad_field"),
        ("blank", {"type": "refresh", "token": "   "}, "bad_field"),
        ("too-long", {"type": "refresh", "token": "a" * (MAX_TOKEN_LENGTH + 1)}, "bad_field"),
        ("extra-field", {"type": "refresh", "token": good, "chanel": "x"}, "unknown_field"),
        ("bad-json", '{"type": "refresh", "token": ', "bad_json"),
    ]


@pytest.mark.parametrize("case", [b[0] for b in bad_tokens()])
async def test_bad_refresh_frames_are_refused_and_the_socket_stays(
    pod: InProcessPod, case: str
) -> None:
    # Built when the test runs, not when it is collected: a suite that runs for
    # minutes would otherwise hand over tokens that expired meanwhile.
    frame, code = {b[0]: b[1:] for b in bad_tokens()}[case]
    c = await connect(pod, token(aud="push"))
    await c.send({"type": "subscribe", "channel": "news"})
    await c.wait_reply("subscribed")
    answer = await refresh(c, frame)
    assert answer["type"] == "error" and answer["code"] == code, answer
    # Nothing changed: still subscribed, still open.
    await c.send({"type": "ping"})
    await c.wait_reply("pong")
    assert not c.of_type("unsubscribed") and not c.closed
    await c.close()


async def test_a_token_of_exactly_the_longest_length_is_checked_not_refused_by_size(
    pod: InProcessPod,
) -> None:
    c = await connect(pod, token(aud="push"))
    answer = await refresh(c, {"type": "refresh", "token": "a" * MAX_TOKEN_LENGTH})
    assert answer["code"] == "bad_token"  # the JWT check, not the size check
    await c.close()


async def test_a_right_revoked_by_a_refresh_unsubscribes_that_channel(pod: InProcessPod) -> None:
    c = await connect(pod, token(aud="push", channels=["news", "orders.*"]))
    for ch in ("news", "orders.eu"):
        await c.send({"type": "subscribe", "channel": ch})
        await c.wait_reply("subscribed", 1 if ch == "news" else 2)
    revoked_before = pod.metric("clarion_subscriptions_refused_total", {"reason": "revoked"})
    answer = await refresh(c, {"type": "refresh", "token": token(aud="push", channels=["news"])})
    assert answer["type"] == "refreshed"
    gone = c.of_type("unsubscribed")
    assert gone == [
        {
            "type": "unsubscribed",
            "channel": "orders.eu",
            "reason": "revoked",
            "message": "the connection's new rights do not allow this channel",
        }
    ]
    # The revoked channel no longer delivers; the kept one does.
    async with httpx.AsyncClient(base_url=pod.http_url, headers=AUTH) as http:
        r = await http.post("/api/publish", json={"channel": "orders.eu", "data": "revoked"})
        assert r.status_code == 202
        r = await http.post("/api/publish", json={"channel": "news", "data": "kept"})
        assert r.status_code == 202
    await c.wait_data("kept")
    assert "revoked" not in c.data()
    # And it cannot come back under the new rights.
    await c.send({"type": "subscribe", "channel": "orders.eu"})
    error = await c.wait_frame(lambda f: isinstance(f, dict) and f.get("code") == "forbidden")
    assert error["channel"] == "orders.eu"
    assert pod.metric("clarion_subscriptions_refused_total", {"reason": "revoked"}) == (
        revoked_before + 1
    )
    assert pod.metric("clarion_refreshes_total", {"result": "ok"}) >= 1
    await c.close()


def typed(lines: list[Any], ftype: str) -> list[dict[str, Any]]:
    return [f for f in lines if isinstance(f, dict) and f.get("type") == ftype]


async def test_refresh_on_an_http_stream_through_emulation(pod: InProcessPod) -> None:
    """A stream's refresh frame is posted like its other frames and works the same."""
    lines: list[Any] = []
    url = f"{pod.http_url}/stream?token={token(ttl=1.5, aud='push')}&channel=news&channel=orders.eu"
    async with httpx.AsyncClient(timeout=10) as http:
        async with http.stream("GET", url) as resp:
            assert resp.status_code == 200

            async def read() -> None:
                async for line in resp.aiter_lines():
                    if line.strip():
                        lines.append(orjson.loads(line))

            reader = asyncio.create_task(read())
            try:
                (welcome,) = await wait_for(lambda: typed(lines, "welcome"), 5)
                exp = int(time.time() + 30)
                new = token(exp=exp, aud="push", channels=["news"])
                r = await http.post(
                    f"{pod.http_url}/emulation",
                    json={
                        "session": welcome["session"],
                        "frames": [{"type": "refresh", "token": new}],
                    },
                )
                assert r.status_code == 202, r.text
                (refreshed,) = await wait_for(lambda: typed(lines, "refreshed"), 5)
                assert refreshed["expire_at"] == exp
                assert [f["channel"] for f in typed(lines, "unsubscribed")] == ["orders.eu"]
                # Past the first token's exp the stream is still open: no close frame.
                await wait_for(lambda: time.time() > exp - 28, 5, message="the first exp")
                r = await http.post(
                    f"{pod.http_url}/emulation",
                    json={"session": welcome["session"], "frames": ["ping"]},
                )
                assert r.status_code == 202
                await wait_for(lambda: "pong" in lines, 5, message="pong")
                assert not typed(lines, "close")
            finally:
                reader.cancel()


async def test_refreshed_every_half_second_no_reconnect_no_lost_message(vhost: Vhost) -> None:
    """Short tokens refreshed in band while messages flow on RabbitMQ: one socket from
    the first message to the last, every message once (the issue's 5 s / 1 min, scaled)."""
    async with InProcessPod(
        auth="jwt", jwt_secret=SECRET, api_keys=[API_KEY], amqp_url=vhost.amqp_url
    ) as p:
        c = await connect(p, token(ttl=1.5))
        await c.send({"type": "subscribe", "channel": "news"})
        await c.wait_reply("subscribed")
        sent: list[int] = []
        stop = time.monotonic() + 6

        async def publish() -> None:
            async with httpx.AsyncClient(base_url=p.http_url, headers=AUTH) as http:
                i = 0
                while time.monotonic() < stop:
                    r = await http.post("/api/publish", json={"channel": "news", "data": i})
                    assert r.status_code == 202
                    sent.append(i)
                    i += 1
                    await asyncio.sleep(0.02)

        async def refresher() -> None:
            n = 0
            while time.monotonic() < stop:
                await c.send({"type": "refresh", "token": token(ttl=1.5)})
                n += 1
                await c.wait_reply("refreshed", n)
                await asyncio.sleep(0.5)

        await asyncio.gather(publish(), refresher())
        await c.wait_data(sent[-1])
        assert c.data() == sent  # each once, in order
        assert not c.closed and len(c.of_type("welcome")) == 1
        assert not c.of_type("error")
        await c.close()


async def test_the_python_subscriber_refreshes_in_band_and_drops_a_revoked_channel(
    pod: InProcessPod,
) -> None:
    """2 s tokens for 6 s: one connection throughout, every message once; the fourth
    token no longer allows ``orders.eu`` and the subscriber stops asking for it."""
    from clarion_client import Subscriber

    calls = 0
    errors: list[tuple[str, str]] = []

    def get_token() -> str:
        nonlocal calls
        calls += 1
        channels = ["news", "orders.*"] if calls < 4 else ["news"]
        return token(ttl=2, aud="push", channels=channels)

    sub = Subscriber(
        pod.ws_url,
        get_token=get_token,
        channels=["news", "orders.eu"],
        refresh_margin=1.0,
        on_error=lambda code, text: errors.append((code, text)),
    )
    got: list[Any] = []

    async def consume() -> None:
        async for m in sub:
            got.append(m.data)

    async with sub:
        reader = asyncio.create_task(consume())
        await wait_for(lambda: len(sub.subscribed) == 2, 5, message="subscribed")
        sent: list[int] = []
        stop = time.monotonic() + 6
        async with httpx.AsyncClient(base_url=pod.http_url, headers=AUTH) as http:
            while time.monotonic() < stop:
                r = await http.post("/api/publish", json={"channel": "news", "data": len(sent)})
                assert r.status_code == 202
                sent.append(len(sent))
                await asyncio.sleep(0.05)
        await wait_for(lambda: got[-1:] == sent[-1:], 5, message="the last message")
        assert got == sent
        assert sub.stats.connections == 1 and sub.stats.refreshes >= 3
        assert sub.channels == ["news"]
        assert ("revoked", "orders.eu: the connection's new rights do not allow this channel") in (
            errors
        )
        reader.cancel()
