"""Who may connect, subscribe, publish and administer, and the limits on each.

Real pods with ``auth=jwt``, in-process (the real app under a real uvicorn, on
real sockets); tokens are signed here with PyJWT (HS256 secret, RS256 from a PEM
public key file and from a JWKS file).
Each refusal is checked as a client sees it: a close code with a reason and no
half-open session (no welcome frame, not counted as a connection), an error
frame, or an HTTP status with a JSON error, and the metric that counts it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from .support import InProcessPod, wait_for, wait_for_sync
from .wsclient import Client, refused

SECRET = "s3cret-" + uuid.uuid4().hex
API_KEYS = ("key-old-" + uuid.uuid4().hex[:8], "key-new-" + uuid.uuid4().hex[:8])
ADMIN_TOKEN = "admin-" + uuid.uuid4().hex
ORIGIN = "https://app.example.com"
MAX_SUBSCRIPTIONS = 3
MAX_FRAMES_PER_SECOND = 5
MAX_FRAME_BYTES = 4096
MAX_BODY_BYTES = 2048
MAX_CONNECTIONS = 3


def hs256(sub: str, secret: str = SECRET, **claims: Any) -> str:
    claims.setdefault("exp", int(time.time()) + 300)
    return jwt.encode({"sub": sub, **claims}, secret, algorithm="HS256")


async def signed_in(pod: InProcessPod, user: str, **claims: Any) -> Client:
    """A session of ``user`` with an HS256 token in the query, once welcomed as that user."""
    s = await Client.connect(f"{pod.ws_url}?token={hs256(user, **claims)}", user)
    assert (await s.wait_welcome())["user"] == user
    return s


def _hmac_token(claims: dict[str, Any], secret: bytes) -> str:
    """An HS256 JWT built by hand (PyJWT rightly refuses a PEM as an HMAC secret)."""

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    sig = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


def _rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.fixture(scope="module")
def rsa_keys() -> dict[str, rsa.RSAPrivateKey]:
    return {"pem": _rsa_key(), "jwks": _rsa_key(), "stranger": _rsa_key()}


@pytest.fixture(scope="module")
def pods(
    tmp_path_factory: pytest.TempPathFactory, rsa_keys: dict[str, rsa.RSAPrivateKey]
) -> Iterator[dict[str, InProcessPod]]:
    """Three pods: HS256 with every limit, RS256 (PEM + JWKS), a tiny pod."""
    d: Path = tmp_path_factory.mktemp("security")
    tag = uuid.uuid4().hex[:6]
    (d / "public.pem").write_bytes(_pem(rsa_keys["pem"]))
    jwk = RSAAlgorithm.to_jwk(rsa_keys["jwks"].public_key(), as_dict=True)
    jwk.update(kid="key-2", alg="RS256", use="sig")
    (d / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
    hs = InProcessPod(
        f"sec-hs-{tag}",
        auth="jwt",
        jwt_secret=SECRET,
        # Tokens without a channels claim may subscribe (the default: test_token_policy.py).
        jwt_any_channel=True,
        api_keys=list(API_KEYS),
        admin_token=ADMIN_TOKEN,
        allowed_origins=[ORIGIN, "https://other.example.com"],
        max_subscriptions=MAX_SUBSCRIPTIONS,
        max_frames_per_second=MAX_FRAMES_PER_SECOND,
        max_frame_bytes=MAX_FRAME_BYTES,
        max_body_bytes=MAX_BODY_BYTES,
    )
    rs = InProcessPod(
        f"sec-rs-{tag}",
        auth="jwt",
        jwt_public_key=str(d / "public.pem"),
        jwks_file=str(d / "jwks.json"),
        public_api=True,  # its publish API is not what these tests look at
    )
    # Configured through the environment, as a Kubernetes Deployment does.
    tiny = InProcessPod(
        f"sec-tiny-{tag}",
        env={"CLARION_AUTH": "none", "CLARION_MAX_CONNECTIONS": str(MAX_CONNECTIONS)},
    )
    all_pods = {"hs": hs, "rs": rs, "tiny": tiny}
    try:
        for pod in all_pods.values():
            pod.start()
        yield all_pods
    finally:
        for pod in all_pods.values():
            pod.stop()


@pytest.fixture
def hs(pods: dict[str, InProcessPod]) -> InProcessPod:
    # Every test starts from a pod without sockets of earlier tests.
    pod = pods["hs"]
    wait_for_sync(lambda: pod.metric("clarion_connections") == 0, 10)
    return pod


def _metric(pod: InProcessPod, name: str, **labels: str) -> float:
    return pod.metric(name, labels or None)


# -- JWT -------------------------------------------------------------------------


@pytest.mark.timeout(30)
async def test_hs256_token_in_query_and_header(hs: InProcessPod) -> None:
    s = await Client.connect(f"{hs.ws_url}?token={hs256('alice')}")
    assert (await s.wait_welcome())["user"] == "alice"
    hdr = await Client.connect(
        hs.ws_url, additional_headers={"Authorization": f"Bearer {hs256('bob')}"}
    )
    assert (await hdr.wait_welcome())["user"] == "bob"
    # The session works: the user's messages arrive.
    async with httpx.AsyncClient() as http:
        r = await http.post(
            f"{hs.http_url}/api/publish",
            json={"user": "bob", "data": "hi bob"},
            headers={"Authorization": f"Bearer {API_KEYS[0]}"},
        )
    assert r.status_code == 202
    assert (await hdr.wait_reply("message"))["data"] == "hi bob"
    await s.close()
    await hdr.close()


@pytest.mark.timeout(40)
@pytest.mark.parametrize(
    ("case", "reason_part"),
    [
        ("missing", "missing token"),
        ("bad_signature", "invalid token"),
        ("expired", "expired"),
        ("garbage", "invalid token"),
        ("no_sub", "invalid token"),
        ("bad_header", "missing token"),
    ],
)
async def test_bad_tokens_are_refused_4500_and_expired_ones_4001(
    hs: InProcessPod, case: str, reason_part: str
) -> None:
    kw: dict[str, Any] = {}
    url = hs.ws_url
    if case == "bad_signature":
        url += f"?token={hs256('mallory', secret='not-the-secret-' + uuid.uuid4().hex)}"
    elif case == "expired":
        url += f"?token={hs256('alice', exp=int(time.time()) - 60)}"
    elif case == "garbage":
        url += "?token=not.a.jwt"
    elif case == "no_sub":
        url += "?token=" + jwt.encode({"exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    elif case == "bad_header":
        kw["additional_headers"] = {"Authorization": f"Basic {hs256('alice')}"}
    # An expired token can be refreshed (the client reconnects); a bad one cannot.
    want, label = (4001, "token_expired") if case == "expired" else (4500, "unauthorized")
    closed0 = _metric(hs, "clarion_connections_closed_total", reason=label)
    opened0 = _metric(hs, "clarion_connections_opened_total")
    code, reason, frames = await refused(url, **kw)
    assert code == want, (code, reason)
    assert reason_part in reason, reason
    assert frames == [], f"a refused socket got frames: {frames}"  # never a half-open session
    assert _metric(hs, "clarion_connections_closed_total", reason=label) == closed0 + 1
    assert _metric(hs, "clarion_connections_opened_total") == opened0


@pytest.mark.timeout(30)
async def test_rs256_with_pem_and_jwks(
    pods: dict[str, InProcessPod], rsa_keys: dict[str, rsa.RSAPrivateKey]
) -> None:
    rs = pods["rs"]
    exp = int(time.time()) + 300
    pem_token = jwt.encode({"sub": "pem-user", "exp": exp}, rsa_keys["pem"], algorithm="RS256")
    jwks_token = jwt.encode(
        {"sub": "jwks-user", "exp": exp},
        rsa_keys["jwks"],
        algorithm="RS256",
        headers={"kid": "key-2"},
    )
    for token, user in ((pem_token, "pem-user"), (jwks_token, "jwks-user")):
        s = await Client.connect(f"{rs.ws_url}?token={token}")
        assert (await s.wait_welcome()).get("user") == user, (s.close_code, s.close_reason)
        await s.close()
    stranger = jwt.encode(
        {"sub": "eve", "exp": exp},
        rsa_keys["stranger"],
        algorithm="RS256",
        headers={"kid": "key-2"},
    )
    code, reason, frames = await refused(f"{rs.ws_url}?token={stranger}")
    assert (code, frames) == (4500, []) and "invalid token" in reason, reason
    # Algorithm confusion: an HS256 token "signed" with the public PEM as the secret.
    confused = _hmac_token({"sub": "eve", "exp": exp}, _pem(rsa_keys["pem"]))
    code, reason, frames = await refused(f"{rs.ws_url}?token={confused}")
    assert (code, frames) == (4500, []), (code, reason)


@pytest.mark.timeout(30)
async def test_channels_claim_limits_subscriptions(hs: InProcessPod) -> None:
    s = await signed_in(hs, "carol", channels=["orders.*", "news"])
    await s.send({"type": "subscribe", "channel": "orders.eu"})
    assert (await s.wait_reply("subscribed"))["channel"] == "orders.eu"
    await s.send({"type": "subscribe", "channel": "billing.eu"})
    err = await s.wait_reply("error")
    assert err["code"] == "forbidden" and "billing.eu" in err["message"]
    await s.send({"type": "subscribe", "channel": "news"})
    assert (await s.wait_reply("subscribed", 2))["channel"] == "news"
    assert not s.closed  # a forbidden subscribe is an error frame, not a disconnect
    await s.close()


@pytest.mark.timeout(30)
async def test_token_expiring_while_connected_closes_4001(hs: InProcessPod) -> None:
    expired0 = _metric(hs, "clarion_connections_closed_total", reason="token_expired")
    s = await signed_in(hs, "dave", exp=int(time.time()) + 2)
    t0 = time.monotonic()
    await s.wait_closed(8)
    assert (s.close_code, s.close_reason) == (4001, "token expired")
    assert time.monotonic() - t0 < 4
    await wait_for(
        lambda: (
            _metric(hs, "clarion_connections_closed_total", reason="token_expired") == expired0 + 1
        ),
        5,
    )


# -- API keys and the admin endpoint ----------------------------------------------


@pytest.mark.timeout(30)
async def test_api_keys_rotation_and_refusal(hs: InProcessPod) -> None:
    url = f"{hs.http_url}/api/publish"
    body = {"broadcast": True, "data": "x"}
    async with httpx.AsyncClient() as http:
        for key in API_KEYS:  # old and new key both work during a rotation
            r = await http.post(url, json=body, headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 202 and "id" in r.json()
        for headers in (
            {},
            {"Authorization": "Bearer wrong-key"},
            {"Authorization": f"Bearer {API_KEYS[0]}x"},
            {"Authorization": f"Basic {API_KEYS[0]}"},
            {"Authorization": f"Bearer {API_KEYS[0][:-1]}"},
        ):
            r = await http.post(url, json=body, headers=headers)
            assert r.status_code == 401, (headers, r.status_code)
            assert r.json()["error"] == "unauthorized" and r.json()["message"]


@pytest.mark.timeout(30)
async def test_admin_shed_needs_its_token(hs: InProcessPod) -> None:
    sessions = [await signed_in(hs, f"shed{i}") for i in range(3)]
    url = f"{hs.http_url}/admin/shed"
    async with httpx.AsyncClient() as http:
        for headers in (
            {},
            {"Authorization": f"Bearer {API_KEYS[0]}"},  # an API key is not the admin token
            {"Authorization": "Bearer nope"},
        ):
            r = await http.post(url, json={"count": 2}, headers=headers)
            assert r.status_code == 401, (headers, r.status_code)
        assert not any(s.closed for s in sessions)
        shed0 = _metric(hs, "clarion_connections_closed_total", reason="shed")
        r = await http.post(
            url, json={"count": 2}, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        assert r.status_code == 200 and r.json()["shed"] == 2, r.text
        r = await http.post(
            url, json={"count": -1}, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        assert r.status_code == 400
    await wait_for(lambda: sum(s.closed for s in sessions) == 2, 5)
    closed = [s for s in sessions if s.closed]
    assert all(s.close_code == 1012 and "reconnect" in s.close_reason for s in closed)
    assert _metric(hs, "clarion_connections_closed_total", reason="shed") == shed0 + 2
    for s in sessions:
        await s.close()


# -- Origin allowlist ---------------------------------------------------------------


@pytest.mark.timeout(30)
async def test_origin_allowlist(hs: InProcessPod) -> None:
    token = hs256("olga")
    s = await Client.connect(f"{hs.ws_url}?token={token}", origin=ORIGIN)
    assert (await s.wait_welcome())["user"] == "olga"
    await s.close()
    code, reason, frames = await refused(
        f"{hs.ws_url}?token={token}", origin="https://evil.example.net"
    )
    assert (code, frames) == (4501, []) and "origin" in reason, (code, reason)
    # Non-browser clients send no Origin and are let in.
    s = await Client.connect(f"{hs.ws_url}?token={token}")
    assert (await s.wait_welcome())["user"] == "olga"
    await s.close()


# -- limits --------------------------------------------------------------------------


@pytest.mark.timeout(30)
async def test_max_connections_refuses_with_1013(pods: dict[str, InProcessPod]) -> None:
    tiny = pods["tiny"]
    overload0 = _metric(tiny, "clarion_connections_closed_total", reason="overload")
    hits0 = _metric(tiny, "clarion_limit_hits_total", limit="connections")
    held = [await Client.connect(f"{tiny.ws_url}?user=u{i}") for i in range(MAX_CONNECTIONS)]
    for s in held:
        await s.wait_welcome()
    code, reason, frames = await refused(f"{tiny.ws_url}?user=one-too-many")
    assert (code, frames) == (1013, []) and "try again" in reason, (code, reason)
    assert _metric(tiny, "clarion_connections") == MAX_CONNECTIONS
    assert _metric(tiny, "clarion_connections_closed_total", reason="overload") == overload0 + 1
    assert _metric(tiny, "clarion_limit_hits_total", limit="connections") == hits0 + 1
    await held[0].close()
    await wait_for(lambda: _metric(tiny, "clarion_connections") == MAX_CONNECTIONS - 1, 5)
    s = await Client.connect(f"{tiny.ws_url}?user=next")  # room again
    assert (await s.wait_welcome())["user"] == "next"
    for h in [*held, s]:
        await h.close()


@pytest.mark.timeout(30)
async def test_max_subscriptions(hs: InProcessPod) -> None:
    hits0 = _metric(hs, "clarion_limit_hits_total", limit="subscriptions")
    s = await signed_in(hs, "sub-user")
    for i in range(MAX_SUBSCRIPTIONS):
        await s.send({"type": "subscribe", "channel": f"c{i}"})
        await s.wait_reply("subscribed", i + 1)
    await s.send({"type": "subscribe", "channel": "one-more"})
    err = await s.wait_reply("error")
    assert err["code"] == "too_many_subscriptions", err
    assert _metric(hs, "clarion_limit_hits_total", limit="subscriptions") == hits0 + 1
    assert _metric(hs, "clarion_subscriptions") == MAX_SUBSCRIPTIONS
    await s.send({"type": "subscribe", "channel": "c0"})  # already held: still fine
    await s.wait_reply("subscribed", MAX_SUBSCRIPTIONS + 1)
    await s.send({"type": "unsubscribe", "channel": "c1"})
    await s.wait_reply("unsubscribed")
    await s.send({"type": "subscribe", "channel": "one-more"})
    assert (await s.wait_reply("subscribed", MAX_SUBSCRIPTIONS + 2))["channel"] == "one-more"
    assert not s.closed
    await s.close()
    await wait_for(lambda: _metric(hs, "clarion_subscriptions") == 0, 5)


@pytest.mark.timeout(30)
async def test_frame_flood_is_rate_limited(hs: InProcessPod) -> None:
    hits0 = _metric(hs, "clarion_limit_hits_total", limit="frame_rate")
    s = await signed_in(hs, "flooder")
    flood = 60
    t0 = time.monotonic()
    for _ in range(flood):
        await s.send({"type": "ping"})
    await wait_for(lambda: len(s.of_type("pong")) + len(s.of_type("error")) >= flood, 5)
    elapsed = time.monotonic() - t0
    pongs, errors = s.of_type("pong"), s.of_type("error")
    assert all(e["code"] == "rate_limited" for e in errors), errors[:3]
    # A burst of twice the rate gets through, plus what refills meanwhile; the
    # rest is refused at once, not queued.
    allowed = 2 * MAX_FRAMES_PER_SECOND + MAX_FRAMES_PER_SECOND * elapsed + 1
    assert 2 * MAX_FRAMES_PER_SECOND <= len(pongs) <= allowed, (len(pongs), elapsed)
    assert len(errors) == flood - len(pongs)
    assert _metric(hs, "clarion_limit_hits_total", limit="frame_rate") - hits0 == len(errors)
    # The socket stays usable once the client slows down.
    await asyncio.sleep(2.0 / MAX_FRAMES_PER_SECOND)  # the bucket refills at the rate
    await s.send({"type": "ping"})
    await wait_for(lambda: len(s.of_type("pong")) == len(pongs) + 1, 5)
    assert not s.closed
    await s.close()


@pytest.mark.timeout(30)
async def test_oversized_frame_closes_1009(hs: InProcessPod) -> None:
    too_big0 = _metric(hs, "clarion_connections_closed_total", reason="too_big")
    hits0 = _metric(hs, "clarion_limit_hits_total", limit="frame_size")
    s = await signed_in(hs, "big")
    await s.send({"type": "ping", "pad": "x" * (MAX_FRAME_BYTES - 100)})  # just under: fine
    await s.wait_reply("pong")
    await s.send({"type": "ping", "pad": "x" * MAX_FRAME_BYTES})
    assert await s.wait_closed(5) == 1009
    await wait_for(
        lambda: _metric(hs, "clarion_connections_closed_total", reason="too_big") == too_big0 + 1,
        5,
    )
    assert _metric(hs, "clarion_limit_hits_total", limit="frame_size") == hits0 + 1
    # Only that socket: the pod is fine.
    other = await signed_in(hs, "after-big")
    await other.close()


@pytest.mark.timeout(30)
async def test_publish_body_limit_413(hs: InProcessPod) -> None:
    url = f"{hs.http_url}/api/publish"
    headers = {"Authorization": f"Bearer {API_KEYS[1]}"}
    hits0 = _metric(hs, "clarion_limit_hits_total", limit="body_size")
    async with httpx.AsyncClient() as http:
        small = {"broadcast": True, "data": "x" * (MAX_BODY_BYTES - 100)}
        assert (await http.post(url, json=small, headers=headers)).status_code == 202
        big = {"broadcast": True, "data": "x" * MAX_BODY_BYTES}
        r = await http.post(url, json=big, headers=headers)
        assert r.status_code == 413 and r.json()["error"] == "too_large", r.text

        async def chunks() -> Any:  # no Content-Length: the limit holds while streaming
            for _ in range(8):
                yield b" " * 512

        r = await http.post(url, content=chunks(), headers=headers)
        assert r.status_code == 413, r.text
        assert _metric(hs, "clarion_limit_hits_total", limit="body_size") == hits0 + 2
        # The key is checked before the body is read.
        r = await http.post(url, json=big)
        assert r.status_code == 401
