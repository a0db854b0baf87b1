"""The connect and refresh proxies against a real HTTP backend and real pods.

The backend (an HTTP server on a loopback port, answering by the session cookie)
checks every request's signature and records what it was given. Deny by default:
only a valid 2xx answer lets a connection in; a no is 4503 and the client stops;
no usable answer (slow, 5xx, hang-up, redirect, garbage, huge, wrong types) is 1013
and counted, never an open door.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import orjson
import pytest

from clarion import webhooks
from clarion.proxy import MAX_ANSWER, parse_answer

from .support import InProcessPod, PodFactory, wait_for
from .wsclient import Client

pytestmark = pytest.mark.timeout(60)

PROXY_SECRET = "proxy-secret-" + uuid.uuid4().hex
JWT_SECRET = "jwt-secret-0123456789abcdef0123456789"

#: What the backend answers, by the session cookie's value: (status, body, delay, headers).
BAD_ANSWERS: dict[str, tuple[int, bytes, float]] = {
    "slow": (200, b'{"user": "slow"}', 3.0),
    "500": (500, b"oops", 0),
    "503": (503, b"", 0),
    "404": (404, b"not here", 0),
    "redirect": (302, b"", 0),
    "garbage": (200, b"not json at all", 0),
    "empty": (200, b"", 0),
    "huge": (200, b'{"user": "h", "info": "' + b"x" * MAX_ANSWER + b'"}', 0),
    "list": (200, b'["alice"]', 0),
    "user-number": (200, b'{"user": 5}', 0),
    "user-empty": (200, b'{"user": ""}', 0),
    "user-long": (200, orjson.dumps({"user": "u" * 257}), 0),
    "no-user": (200, b'{"channels": ["a"]}', 0),
    "typo": (200, b'{"user": "a", "expires_at": 99999999999}', 0),
    "channels-string": (200, b'{"user": "a", "channels": "orders.*"}', 0),
    "channels-numbers": (200, b'{"user": "a", "channels": [1, 2]}', 0),
    "subscribe-pattern": (200, b'{"user": "a", "subscribe": ["orders.*"]}', 0),
    "expire-past": (200, b'{"user": "a", "expire_at": 1000}', 0),
    "expire-bool": (200, b'{"user": "a", "expire_at": true}', 0),
    "expire-string": (200, b'{"user": "a", "expire_at": "soon"}', 0),
    "deny-false": (200, b'{"deny": false}', 0),
    "deny-extra": (200, b'{"deny": true, "user": "a"}', 0),
}


class Backend:
    """The application: answers the connect proxy by cookie, the refresh proxy by user."""

    def __init__(self, secret: str = PROXY_SECRET) -> None:
        self.secret = secret
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.in_flight = 0
        self.most_in_flight = 0
        #: The refresh proxy's answers by user: (status, body), in turn; then allow.
        self.refresh_script: dict[str, list[tuple[int, bytes]]] = {}
        #: Seconds the connect answer for ``delay`` waits (concurrency test).
        self.delay = 0.3
        backend = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                signed = webhooks.verify(
                    backend.secret,
                    self.headers.get(webhooks.TIMESTAMP_HEADER, ""),
                    body,
                    self.headers.get(webhooks.SIGNATURE_HEADER, ""),
                )
                req = orjson.loads(body)
                with backend.lock:
                    backend.requests.append(
                        {
                            "path": self.path,
                            "body": req,
                            "signed": signed,
                            "proxy": self.headers.get("X-Clarion-Proxy"),
                        }
                    )
                    backend.in_flight += 1
                    backend.most_in_flight = max(backend.most_in_flight, backend.in_flight)
                try:
                    status, answer, delay = backend.answer(self.path, req, signed)
                    if delay:
                        time.sleep(delay)
                    if status == -1:  # hang up, no answer
                        self.close_connection = True
                        self.connection.close()
                        return
                    self.send_response(status)
                    if status == 302:
                        self.send_header("Location", "http://127.0.0.1:1/elsewhere")
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)
                finally:
                    with backend.lock:
                        backend.in_flight -= 1

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{port}/connect"
        self.refresh_url = f"http://127.0.0.1:{port}/refresh"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, path: str, req: dict[str, Any], signed: bool) -> tuple[int, bytes, float]:
        if not signed:
            return 401, b'{"reason": "bad signature"}', 0
        if path == "/refresh":
            script = self.refresh_script.get(req["user"], [])
            status, body = script.pop(0) if len(script) > 1 else (script[0] if script else (0, b""))
            if status:
                return status, body, 0
            ok = {"channels": ["news"], "expire_at": time.time() + 30}
            return 200, orjson.dumps(ok), 0
        who = req["cookies"].get("session", "")
        if who in BAD_ANSWERS:
            return BAD_ANSWERS[who]
        if who == "hangup":
            return -1, b"", 0
        if who == "banned":
            return 403, b'{"reason": "banned\\nuser"}', 0
        if who == "no":
            return 200, b'{"deny": true, "reason": "not today"}', 0
        if who == "deny-bare":
            return 401, b"", 0
        if who == "delay":
            return 200, b'{"user": "d"}', self.delay
        if who.startswith("short-"):  # expires in 1 s
            user = who.removeprefix("short-")
            ok = {"user": user, "channels": ["news", "orders.*"], "expire_at": time.time() + 1}
            return 200, orjson.dumps(ok), 0
        if who:
            allow = {
                "user": who,
                "channels": ["orders.*"],
                "subscribe": ["news"],
                "expire_at": time.time() + 300,
                "info": {"name": who.title()},
            }
            return 200, orjson.dumps(allow), 0
        return 403, b'{"reason": "no session"}', 0

    def connects(self) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if r["path"] == "/connect"]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def backend() -> Iterator[Backend]:
    b = Backend()
    yield b
    b.close()


def settings(backend: Backend, **kw: Any) -> dict[str, Any]:
    return {
        "auth": "jwt",
        "jwt_secret": JWT_SECRET,
        "public_api": True,
        "connect_proxy": backend.url,
        "proxy_secret": PROXY_SECRET,
        "proxy_cookies": ["session"],
        "proxy_headers": ["X-Forwarded-For", "user-agent"],
        "proxy_timeout": 0.5,
        **kw,
    }


@pytest.fixture(scope="module")
def pod(backend: Backend) -> Iterator[InProcessPod]:
    with InProcessPod(**settings(backend)) as p:
        yield p


def cookie(value: str, *others: str) -> dict[str, Any]:
    return {"additional_headers": {"Cookie": "; ".join([f"session={value}", *others])}}


async def closed_with(pod: InProcessPod, value: str, query: str = "") -> tuple[int | None, str]:
    c = await Client.connect(f"{pod.ws_url}{query}", **cookie(value))
    code = await c.wait_closed(5)
    assert not c.of_type("welcome")
    return code, c.close_reason


async def test_a_cookie_connects_through_the_proxy_with_no_jwt(
    pod: InProcessPod, backend: Backend
) -> None:
    headers = {
        "Cookie": "theme=dark; session=alice; other=SECRET-OTHER",
        "X-Forwarded-For": "10.1.2.3",
        "Authorization": "Basic c2VjcmV0",
        "X-Not-Allowed": "no",
    }
    c = await Client.connect(f'{pod.ws_url}?data={{"page":"orders"}}', additional_headers=headers)
    welcome = await c.wait_welcome()
    assert welcome["user"] == "alice"
    # The backend's server-side subscription is joined before anything else.
    sub = await c.wait_reply("subscribed")
    assert sub["channel"] == "news"
    await c.send({"type": "subscribe", "channel": "orders.eu"})
    await c.wait_reply("subscribed", 2)
    await c.send({"type": "subscribe", "channel": "billing"})
    error = await c.wait_frame(lambda f: isinstance(f, dict) and f.get("type") == "error")
    assert error["code"] == "forbidden" and error["channel"] == "billing"
    req = backend.connects()[-1]
    assert req["signed"] and req["proxy"] == "connect"
    assert req["body"] == {
        "proxy": "connect",
        "transport": "websocket",
        "headers": {
            "x-forwarded-for": "10.1.2.3",
            "user-agent": req["body"]["headers"]["user-agent"],
        },
        "cookies": {"session": "alice"},  # only the allowed cookie
        "data": {"page": "orders"},
    }
    assert pod.metric("clarion_proxy_requests_total", {"proxy": "connect", "result": "allow"}) >= 1
    await c.close()


async def test_a_token_skips_the_proxy_in_no_token_mode(
    pod: InProcessPod, backend: Backend
) -> None:
    before = len(backend.connects())
    tok = jwt.encode({"sub": "jwt-user", "exp": int(time.time()) + 60}, JWT_SECRET)
    c = await Client.connect(f"{pod.ws_url}?token={tok}", **cookie("alice"))
    assert (await c.wait_welcome())["user"] == "jwt-user"
    assert len(backend.connects()) == before
    await c.close()
    # A bad token is refused as always: the proxy is no way around it.
    c = await Client.connect(f"{pod.ws_url}?token=forged", **cookie("alice"))
    assert await c.wait_closed(5) == 4500


async def test_always_mode_asks_the_proxy_even_with_a_token(backend: Backend) -> None:
    tok = jwt.encode({"sub": "jwt-user", "exp": int(time.time()) + 60}, JWT_SECRET)
    async with InProcessPod(**settings(backend, connect_proxy_mode="always")) as p:
        c = await Client.connect(f"{p.ws_url}?token={tok}", **cookie("bob"))
        assert (await c.wait_welcome())["user"] == "bob"
        await c.close()
        assert await closed_with(p, "banned", f"?token={tok}") == (4503, "refused: banneduser")


@pytest.mark.parametrize(
    "value,reason",
    [
        ("banned", "refused: banneduser"),
        ("no", "refused: not today"),
        ("deny-bare", "refused by the backend"),
        ("", "refused: no session"),
    ],
)
async def test_the_backends_no_is_4503_with_its_reason(
    pod: InProcessPod, value: str, reason: str
) -> None:
    assert await closed_with(pod, value) == (4503, reason)


@pytest.mark.parametrize("value", [*BAD_ANSWERS, "hangup"])
async def test_no_usable_answer_fails_closed_with_try_again_later(
    pod: InProcessPod, value: str
) -> None:
    before = pod.metric("clarion_proxy_requests_total", {"proxy": "connect"})
    started = time.monotonic()
    code, reason = await closed_with(pod, value)
    assert (code, reason) == (1013, "auth backend unavailable: try again later")
    assert time.monotonic() - started < 2.5  # the timeout (0.5 s), not the backend's 3 s
    failed = sum(
        pod.metric("clarion_proxy_requests_total", {"proxy": "connect", "result": r})
        for r in ("timeout", "error")
    )
    assert failed >= 1
    assert pod.metric("clarion_proxy_requests_total", {"proxy": "connect"}) == before + 1
    assert pod.metric("clarion_connections_closed_total", {"reason": "proxy_unavailable"}) >= 1


async def test_a_backend_that_is_down_fails_closed() -> None:
    from testkit.net import free_port

    port = free_port("127.0.0.1")  # nothing listens there
    async with InProcessPod(
        auth="jwt",
        jwt_secret=JWT_SECRET,
        public_api=True,
        connect_proxy=f"http://127.0.0.1:{port}/connect",
        proxy_secret=PROXY_SECRET,
        proxy_cookies=["session"],
    ) as p:
        assert await closed_with(p, "alice") == (1013, "auth backend unavailable: try again later")


async def test_a_wrong_secret_is_refused_by_the_backend(backend: Backend) -> None:
    async with InProcessPod(**settings(backend, proxy_secret="not-the-backends")) as p:
        assert await closed_with(p, "alice") == (4503, "refused: bad signature")
    assert backend.requests[-1]["signed"] is False


@pytest.mark.parametrize(
    "data", ["not-json", "{", "x" * 5000], ids=["not-json", "truncated", "too-long"]
)
async def test_bad_client_data_is_refused_without_calling_the_backend(
    pod: InProcessPod, backend: Backend, data: str
) -> None:
    before = len(backend.connects())
    from urllib.parse import quote

    code, reason = await closed_with(pod, "alice", f"?data={quote(data)}")
    assert code == 4500 and "?data=" in reason
    assert len(backend.connects()) == before


async def test_calls_in_flight_are_bounded_per_pod(backend: Backend) -> None:
    backend.delay = 0.3
    with backend.lock:
        backend.most_in_flight = 0
    async with InProcessPod(**settings(backend, proxy_concurrency=2, proxy_timeout=5)) as p:
        clients = await asyncio.gather(
            *(Client.connect(p.ws_url, **cookie("delay")) for _ in range(6))
        )
        for c in clients:
            await c.wait_welcome(10)
        assert backend.most_in_flight == 2
        for c in clients:
            await c.close()


async def test_an_sse_stream_connects_through_the_proxy(
    pod: InProcessPod, backend: Backend
) -> None:
    import httpx

    async with httpx.AsyncClient(timeout=10) as http:
        async with http.stream(
            "GET", f"{pod.http_url}/stream", headers={"Cookie": "session=carol"}
        ) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                frame = orjson.loads(line)
                assert frame["type"] == "welcome" and frame["user"] == "carol"
                break
    assert backend.connects()[-1]["body"]["transport"] == "http_stream"
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.get(f"{pod.http_url}/sse", headers={"Cookie": "session=banned"})
        assert r.status_code == 401 and r.json()["code"] == 4503


# -- expiry and the refresh proxy ----------------------------------------------------


async def test_without_a_refresh_proxy_the_session_expires_4002(pod: InProcessPod) -> None:
    c = await Client.connect(pod.ws_url, **cookie("short-dave"))
    await c.wait_welcome()
    assert await c.wait_closed(5) == 4002
    assert c.close_reason == "session expired: reconnect"


@pytest.fixture(scope="module")
def renewing(backend: Backend) -> Iterator[InProcessPod]:
    with InProcessPod(
        **settings(backend, refresh_proxy=backend.refresh_url, refresh_grace=1.0)
    ) as p:
        yield p


async def test_the_refresh_proxy_renews_and_revokes(
    renewing: InProcessPod, backend: Backend
) -> None:
    c = await Client.connect(renewing.ws_url, **cookie("short-erin"))
    await c.wait_welcome()
    await c.send({"type": "subscribe", "channel": "orders.eu"})
    await c.wait_reply("subscribed")
    # At expire_at the pod asks the backend, which keeps "news" only.
    gone = await c.wait_reply("unsubscribed", timeout=5)
    assert gone["channel"] == "orders.eu" and gone["reason"] == "revoked"
    refresh = [r for r in backend.requests if r["path"] == "/refresh"][-1]
    assert refresh["signed"] and refresh["body"]["user"] == "erin"
    assert refresh["body"]["info"] is None and refresh["body"]["conn"]
    await c.send({"type": "ping"})
    await c.wait_reply("pong")
    assert not c.closed
    await c.close()


async def test_the_refresh_proxys_no_closes_4503(renewing: InProcessPod, backend: Backend) -> None:
    backend.refresh_script["frank"] = [(403, b'{"reason": "logged out"}')]
    c = await Client.connect(renewing.ws_url, **cookie("short-frank"))
    await c.wait_welcome()
    assert await c.wait_closed(5) == 4503
    assert c.close_reason == "refused: logged out"


async def test_a_refresh_proxy_down_past_the_grace_closes_1013(
    renewing: InProcessPod, backend: Backend
) -> None:
    backend.refresh_script["gina"] = [(500, b"")]
    c = await Client.connect(renewing.ws_url, **cookie("short-gina"))
    await c.wait_welcome()
    opened = time.monotonic()
    assert await c.wait_closed(6) == 1013
    assert time.monotonic() - opened > 1.5  # expire_at (1 s) plus the grace (1 s), retried
    tries = [r for r in backend.requests if r["path"] == "/refresh" and r["body"]["user"] == "gina"]
    assert len(tries) >= 2
    assert renewing.metric("clarion_refreshes_total", {"result": "proxy_unavailable"}) >= 2


async def test_a_refresh_proxy_that_recovers_within_the_grace_keeps_the_socket(
    renewing: InProcessPod, backend: Backend
) -> None:
    backend.refresh_script["hank"] = [(500, b""), (0, b"")]
    c = await Client.connect(renewing.ws_url, **cookie("short-hank"))
    await c.wait_welcome()
    await wait_for(
        lambda: renewing.metric("clarion_refreshes_total", {"result": "proxy_ok"}) >= 1, 5
    )
    await c.send({"type": "ping"})
    await c.wait_reply("pong")
    assert not c.closed
    await c.close()


# -- the answer's parser, as a class --------------------------------------------------


@pytest.mark.parametrize(
    "value", sorted(set(BAD_ANSWERS) - {"slow", "500", "503", "404", "redirect", "huge"})
)
def test_the_parser_refuses_each_bad_answer(value: str) -> None:
    raw = BAD_ANSWERS[value][1]
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return  # not JSON: refused before the parser
    with pytest.raises(ValueError):
        parse_answer(obj)


# -- secrets ---------------------------------------------------------------------------


def test_no_cookie_token_or_secret_reaches_the_log(
    backend: Backend, pod_factory: PodFactory
) -> None:
    """A real ``clarion serve`` at debug level; every secret it handled is grepped for."""
    cookie_value = "cookie-" + uuid.uuid4().hex
    (pod,) = pod_factory(
        1,
        "proxy-logs",
        args=[
            "--jwt-secret",
            JWT_SECRET,
            "--public-api",
            "--connect-proxy",
            backend.url,
            "--refresh-proxy",
            backend.refresh_url,
            "--proxy-secret",
            PROXY_SECRET,
            "--proxy-cookies",
            "session,other",
            "--proxy-timeout",
            "0.5",
            "--log-level",
            "debug",
        ],
    )
    good = jwt.encode({"sub": "alice", "exp": int(time.time()) + 60}, JWT_SECRET)
    wrong = jwt.encode({"sub": "mallory", "exp": int(time.time()) + 60}, JWT_SECRET)
    forged = jwt.encode({"sub": "alice", "exp": int(time.time()) + 60}, "x" * 40)

    async def exercise() -> None:
        c = await Client.connect(pod.ws_url, **cookie("alice", f"other={cookie_value}"))
        await c.wait_welcome()
        for tok in (good, wrong, forged):
            await c.send({"type": "refresh", "token": tok})
        await c.wait_reply("refreshed")
        await c.close()
        for value in ("banned", "500", "garbage", "slow"):
            c = await Client.connect(pod.ws_url, **cookie(value, f"other={cookie_value}"))
            await c.wait_closed(5)

    try:
        asyncio.run(exercise())
    finally:
        pod.stop()
    log = pod.log_path.read_text()
    assert "connect proxy" in log  # the failures are there, the secrets are not
    for secret in (PROXY_SECRET, JWT_SECRET, cookie_value, good, wrong, forged, "session=alice"):
        assert secret not in log
