"""What a token may do, decided on purpose and documented (docs/auth.md).

- A token without ``channels`` may subscribe to no channel (``--jwt-any-channel``: any).
- A token with an ``aud`` is refused unless ``--jwt-audience`` names it.
- A token without ``exp`` is refused (``--no-jwt-require-exp`` accepts it).
- ``*`` in a ``channels`` pattern is one dot-separated segment; ``**`` is any run of them.
- A channel name cannot contain pattern characters: subscribing to ``orders.*`` is an
  error, not a subscription to that literal name.
Each against a real in-process pod.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest

from clarion.auth import channel_pattern

from .support import InProcessPod
from .wsclient import Client, refused

pytestmark = pytest.mark.timeout(30)

SECRET = "token-policy-secret-0123456789abcdef"


def token(sub: str = "u", **claims: Any) -> str:
    claims.setdefault("exp", int(time.time()) + 300)
    return jwt.encode({"sub": sub, **{k: v for k, v in claims.items() if v is not None}}, SECRET)


@pytest.fixture(scope="module")
def pods() -> Iterator[dict[str, InProcessPod]]:
    common: dict[str, Any] = {"auth": "jwt", "jwt_secret": SECRET, "public_api": True}
    made = {
        "default": InProcessPod(**common),
        "any_channel": InProcessPod(jwt_any_channel=True, **common),
        "no_exp": InProcessPod(jwt_require_exp=False, **common),
        "audience": InProcessPod(jwt_audience="push", **common),
    }
    for p in made.values():
        p.start()
    try:
        yield made
    finally:
        for p in made.values():
            p.stop()


async def subscribe(pod: InProcessPod, tok: str, channel: str) -> dict[str, Any]:
    c = await Client.connect(f"{pod.ws_url}?token={tok}")
    await c.wait_welcome()
    await c.send({"type": "subscribe", "channel": channel})
    answer: dict[str, Any] = await c.wait_frame(
        lambda f: isinstance(f, dict) and f.get("type") in ("subscribed", "error"), 5, "answer"
    )
    await c.close()
    return answer


@pytest.mark.parametrize("channels", [None, [], ["news"]])
async def test_without_a_matching_channels_claim_no_subscription(
    pods: dict[str, InProcessPod], channels: list[str] | None
) -> None:
    answer = await subscribe(pods["default"], token(channels=channels), "orders.eu")
    assert answer["type"] == "error" and answer["code"] == "forbidden", answer
    assert answer["channel"] == "orders.eu"  # the client can tell which request it was


async def test_any_channel_lets_a_token_without_the_claim_subscribe_anywhere(
    pods: dict[str, InProcessPod],
) -> None:
    assert (await subscribe(pods["any_channel"], token(), "orders.eu"))["type"] == "subscribed"
    # An explicit claim still limits it.
    answer = await subscribe(pods["any_channel"], token(channels=["news"]), "orders.eu")
    assert answer["code"] == "forbidden"


@pytest.mark.parametrize(
    ("pattern", "channel", "allowed"),
    [
        ("orders.*", "orders.eu", True),
        ("orders.*", "orders.eu.x", False),
        ("orders.*", "orders", False),
        ("orders.*", "ordersXeu", False),
        ("orders.**", "orders.eu.x", True),
        ("orders.**", "orders.eu", True),
        ("*.eu", "orders.eu", True),
        ("*.eu", "a.b.eu", False),
        ("news", "news", True),
        ("news", "newsroom", False),
        ("o?ders.eu", "orders.eu", True),
        ("o?ders.eu", "o.ders.eu", False),
        ("a+b(c)", "a+b(c)", True),  # regex characters are literal
        ("a+b(c)", "aab(c)", False),
    ],
)
async def test_channel_patterns(
    pods: dict[str, InProcessPod], pattern: str, channel: str, allowed: bool
) -> None:
    assert bool(channel_pattern(pattern).match(channel)) is allowed
    answer = await subscribe(pods["default"], token(channels=[pattern]), channel)
    assert (answer["type"] == "subscribed") is allowed, answer


@pytest.mark.parametrize("channel", ["orders.*", "orders.**", "news?", "a[b]", "*"])
async def test_a_pattern_is_not_a_channel_name(pods: dict[str, InProcessPod], channel: str) -> None:
    answer = await subscribe(pods["default"], token(channels=["**"]), channel)
    assert answer["type"] == "error" and answer["code"] == "bad_field", answer


@pytest.mark.parametrize(
    ("pod", "claims", "accepted"),
    [
        ("default", {"aud": "push"}, False),  # no audience configured: a token for one is refused
        ("default", {"aud": ["push", "other"]}, False),
        ("audience", {"aud": "push"}, True),
        ("audience", {"aud": ["other", "push"]}, True),
        ("audience", {"aud": "other"}, False),
        ("audience", {}, False),  # the configured audience is required
        ("default", {"exp": None}, False),  # no exp: refused by default
        ("no_exp", {"exp": None}, True),
        ("no_exp", {"exp": int(time.time()) - 60}, False),  # an exp given is still checked
    ],
)
async def test_audience_and_expiry(
    pods: dict[str, InProcessPod], pod: str, claims: dict[str, Any], accepted: bool
) -> None:
    url = f"{pods[pod].ws_url}?token={token(**claims)}"
    if accepted:
        c = await Client.connect(url)
        assert (await c.wait_welcome())["user"] == "u"
        await c.close()
    else:
        code, reason, frames = await refused(url)
        assert code in (4500, 4001) and frames == [], (code, reason)
