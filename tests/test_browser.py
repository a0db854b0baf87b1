"""The demo page (on the JS client, clients/js) in a real headless Chromium against real
pods on RabbitMQ: a pod killed, drained (1001), shed (1012), a slow page (1013), a token
that expires and is refreshed (4001), recovery with since across pods, and the terminal
codes (4500, 4501, 1009) that must stop the page instead of storming. Each checks that the
page's application saw every published message exactly once.

The pods sit behind a small TCP load balancer (as a Service): a page that reconnects gets
the next pod that accepts."""

from __future__ import annotations

import asyncio
import http.server
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import jwt
import pytest

from testkit.net import free_port

from .support import CHROMIUM, CHROMIUM_ARGS, GatewayProcess, PodFactory, Vhost, wait_for_sync

pytestmark = [pytest.mark.timeout(60), pytest.mark.browser]

ADMIN = "browser-admin-token"
SECRET = "browser-jwt-secret-0123456789abcdef"
KEY = "browser-api-key"
DEV = ["--auth", "none", "--admin-token", ADMIN, "--drain-delay", "0", "--drain-window", "0.2"]


class Balancer:
    """A round-robin TCP balancer on loopback: each new connection goes to the next pod
    that accepts it, as a Kubernetes Service sends it to a ready pod."""

    def __init__(self, backends: list[GatewayProcess]) -> None:
        self.backends = backends
        self.port = free_port("127.0.0.1")
        self.url = f"http://127.0.0.1:{self.port}"
        self._next = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._tasks: set[asyncio.Task[None]] = set()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        for _ in range(len(self.backends)):
            pod = self.backends[self._next % len(self.backends)]
            self._next += 1
            try:
                up_r, up_w = await asyncio.open_connection(pod.host, pod.port)
                break
            except OSError:
                continue
        else:
            writer.close()
            return

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except OSError:
                pass
            finally:
                w.close()

        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))

    def __enter__(self) -> Balancer:
        self._thread.start()
        start = asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self._server = asyncio.run_coroutine_threadsafe(start, self._loop).result(5)
        return self

    async def _shutdown(self) -> None:
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()


class Endpoint:
    """A tiny HTTP endpoint the page fetches (cross-origin, so with CORS): each GET
    answers ``body()`` as text."""

    def __init__(self, body: Callable[[], str]) -> None:
        self.calls = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.calls += 1
                data = body().encode()
                self.send_response(200)
                self.send_header("Access-Control-Allow-Origin", "*")
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"

    def __enter__(self) -> Endpoint:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()


def token_endpoint(user: str, ttl: int) -> Endpoint:
    """The application's token endpoint the page's getToken fetches: short-lived JWTs."""
    claims = {"sub": user, "channels": ["chat"]}
    return Endpoint(lambda: jwt.encode({**claims, "exp": int(time.time()) + ttl}, SECRET))


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context()
    try:
        yield context.new_page()
    finally:
        context.close()


class Pods:
    """The pages' pods, on the module's vhost (``pod_factory`` kills them after the test)."""

    def __init__(self, factory: PodFactory, vhost: Vhost) -> None:
        self.factory, self.vhost = factory, vhost

    def start(self, name: str, args: list[str], count: int = 1) -> list[GatewayProcess]:
        return self.factory(count, name, amqp_url=self.vhost.amqp_url, args=args)


@pytest.fixture
def pods(module_vhost: Vhost, pod_factory: PodFactory) -> Pods:
    return Pods(pod_factory, module_vhost)


def publish(pod: GatewayProcess, key: str | None = None, **body: Any) -> str:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    r = httpx.post(f"{pod.http_url}/api/publish", json=body, headers=headers, timeout=10)
    assert r.status_code == 202, r.text
    mid: str = r.json()["id"]
    return mid


def burst(pod: GatewayProcess, user: str, n: int, key: str | None = None) -> list[str]:
    """Messages to the user, the page's channel and everyone."""
    sent = []
    for i in range(n):
        sent.append(publish(pod, key, user=user, data={"text": f"to user {i}"}))
        sent.append(publish(pod, key, channel="chat", data={"text": f"on chat {i}"}))
        sent.append(publish(pod, key, broadcast=True, data={"text": f"to all {i}"}))
    return sent


def demo(page: Any, what: str) -> Any:
    return page.evaluate(f"window.demo.{what}")


def connected(page: Any, timeout: float = 15_000) -> str:
    from playwright.sync_api import expect

    expect(page.locator("#state")).to_have_text("connected", timeout=timeout)
    pod: str = page.locator("#pod").inner_text()
    return pod


def subscribed(page: Any) -> None:
    wait_for_sync(
        lambda: page.evaluate("window.demo.client.subscribe('chat').state") == "subscribed",
        10,
        message="subscribed to chat",
    )


def exactly_once(
    page: Any, pod: GatewayProcess, user: str, sent: list[str], key: str | None = None
) -> None:
    """Every sent message seen once. A barrier message comes last: the page's pod delivers
    in order, so a duplicate of an earlier one would have arrived before it."""
    sent = [*sent, publish(pod, key, user=user, data={"text": "barrier"})]
    wait_for_sync(lambda: set(sent) <= set(demo(page, "ids")), 20, message="every message")
    ids = demo(page, "ids")
    assert sorted(ids) == sorted(sent), f"{len(ids)} seen, {len(sent)} sent"


def codes(page: Any) -> list[int]:
    return [s["code"] for s in demo(page, "states") if s["state"] == "connecting" and s["code"]]


def by_name(pods: list[GatewayProcess], name: str) -> tuple[GatewayProcess, GatewayProcess]:
    mine = next(p for p in pods if p.pod_name == name)
    other = next(p for p in pods if p is not mine)
    return mine, other


@pytest.mark.parametrize("how", ["kill", "drain", "shed"])
def test_a_lost_pod_costs_the_page_nothing(pods: Pods, page: Any, how: str) -> None:
    """kill: SIGKILL (1006); drain: SIGTERM (1001); shed: POST /admin/shed (1012). The page
    reconnects through the balancer (to the other pod for kill and drain) with since, and
    what was published meanwhile arrives once."""
    from playwright.sync_api import expect

    both = pods.start(f"web-{how}", DEV, 2)
    user = f"shopper-{how}"
    with Balancer(both) as lb:
        page.goto(f"{lb.url}/?user={user}")
        mine, other = by_name(both, connected(page))
        subscribed(page)
        sent = burst(other, user, 3)
        wait_for_sync(lambda: len(demo(page, "ids")) == len(sent), 10, message="first burst")
        if how == "kill":
            mine.kill()
        elif how == "drain":
            mine.signal(signal.SIGTERM)
        else:
            r = httpx.post(
                f"{mine.http_url}/admin/shed",
                json={"count": 1},
                headers={"Authorization": f"Bearer {ADMIN}"},
            )
            assert r.json()["shed"] == 1
        expect(page.locator("#log")).to_contain_text("), reconnecting", timeout=10_000)
        sent += burst(other, user, 3)  # while the page has no socket
        now_on = connected(page)
        if how != "shed":
            assert now_on == other.pod_name
        sent += burst(other, user, 2)
        exactly_once(page, other, user, sent)
        expected = {"kill": 1006, "drain": 1001, "shed": 1012}[how]
        assert codes(page)[0] == expected
        assert all(r["recovered"] for r in demo(page, "recoveries"))
        assert demo(page, "errors") == []


def test_token_expiry_is_refreshed_through_get_token(pods: Pods, page: Any) -> None:
    """A 3 s token from the application's endpoint: the page fetches a new one before
    each exp and hands it over in band (a `refresh` frame), so its one socket outlives
    several tokens, is never closed 4001 and misses nothing."""
    (pod,) = pods.start("web-jwt", ["--auth", "jwt", "--jwt-secret", SECRET, "--api-key", KEY])
    user = f"jwt-{uuid.uuid4().hex[:6]}"
    with token_endpoint(user, ttl=3) as tokens:
        page.goto(f"{pod.http_url}/?tokenUrl={tokens.url}")
        connected(page)
        subscribed(page)
        sent: list[str] = []
        deadline = time.monotonic() + 20
        # Past two exps of the first token, with messages flowing all along.
        while tokens.calls < 4:
            assert time.monotonic() < deadline, (tokens.calls, demo(page, "states"))
            sent += burst(pod, user, 1, KEY)
        exactly_once(page, pod, user, sent, KEY)
        assert codes(page) == []  # one socket: refreshed in band, no 4001 and reconnect
        assert page.locator("#state").inner_text() == "connected"
        assert demo(page, "errors") == []


def test_a_slow_page_is_closed_1013_and_recovers_every_message(pods: Pods, page: Any) -> None:
    """The page's main thread is stuck (polling a gate with synchronous XHRs) while 16 KB
    messages are published to it: Chromium stops reading, the pod's send buffer overflows
    and the pod closes the socket with 1013 behind the bytes already in flight. The gate
    opens at once (the pod waits up to 5 s for its close to go out); the page reads what
    came, gets the 1013, backs off and comes back with since: the replay fills the gap,
    exactly once."""
    args = [*DEV, "--send-buffer-bytes", "262144", "--max-body-bytes", "4194304"]
    (pod,) = pods.start("web-slow", args)
    user = f"slow-{uuid.uuid4().hex[:6]}"
    closed = {"reason": "slow_client"}
    is_open = threading.Event()
    with Endpoint(lambda: "go" if is_open.is_set() else "wait") as gate:
        page.goto(f"{pod.http_url}/?user={user}")
        connected(page)
        page.evaluate(
            """(url) => setTimeout(() => {
                 for (let t = Date.now() + 20000; Date.now() < t; ) {
                   const x = new XMLHttpRequest(); x.open("GET", url, false); x.send();
                   if (x.responseText === "go") break;
                 }
               }, 0)""",
            gate.url,
        )
        pad = "x" * 16_000
        sent: list[str] = []
        deadline = time.monotonic() + 20
        while not pod.metric("clarion_connections_closed_total", closed):
            assert time.monotonic() < deadline, "no slow_client close"
            batch = [{"user": user, "data": {"text": f"big {len(sent) + i}", "pad": pad}}
                     for i in range(100)]  # fmt: skip
            r = httpx.post(f"{pod.http_url}/api/publish", json={"messages": batch}, timeout=10)
            assert r.status_code == 202, r.text
            sent += r.json()["ids"]
        is_open.set()
        page.evaluate("1")  # returns once the page's thread is free again
    wait_for_sync(lambda: codes(page), 10, message="the page's close")
    assert codes(page) == [1013]
    connected(page)
    exactly_once(page, pod, user, sent)
    assert all(r["recovered"] for r in demo(page, "recoveries"))
    assert pod.metric("clarion_messages_dropped_total", closed) > 0


def test_terminal_codes_stop_the_page_without_a_storm(pods: Pods, page: Any) -> None:
    """4500 (a bad token), 4501 (an origin not allowed) and 1009 (a frame too big): the
    page says it stopped, and does not come back."""
    from playwright.sync_api import expect

    stop_args = ["--auth", "jwt", "--jwt-secret", SECRET, "--public-api", "--max-frame-bytes"]
    (jwt_pod,) = pods.start("web-stop", [*stop_args, "4096", "--allow-client-publish"])
    (origin_pod,) = pods.start(
        "web-origin", ["--auth", "none", "--allowed-origins", "http://x.invalid"]
    )

    def stopped(url: str, code: int, pod: GatewayProcess, label: str) -> None:
        page.goto(url)
        expect(page.locator("#state")).to_have_text("stopped", timeout=10_000)
        expect(page.locator("#log")).to_contain_text(f"stopped ({code}")
        page.wait_for_timeout(1500)  # more than any backoff: no second socket
        assert pod.metric("clarion_connections_closed_total", {"reason": label}) == 1
        assert demo(page, "errors")[-1]["closeCode"] == code

    forged = jwt.encode({"sub": "x", "exp": int(time.time()) + 60}, "forged-" * 6)
    stopped(f"{jwt_pod.http_url}/?token={forged}", 4500, jwt_pod, "unauthorized")
    stopped(f"{origin_pod.http_url}/?user=x", 4501, origin_pod, "origin")

    good = jwt.encode({"sub": "big", "exp": int(time.time()) + 60, "channels": ["chat"]}, SECRET)
    page.goto(f"{jwt_pod.http_url}/?token={good}")
    connected(page)
    page.evaluate("window.demo.client.publish('chat', 'x'.repeat(10000)).catch(() => {})")
    expect(page.locator("#state")).to_have_text("stopped", timeout=10_000)
    page.wait_for_timeout(1500)
    assert jwt_pod.metric("clarion_connections_opened_total") == 1  # the big one; no retry
    assert demo(page, "errors")[-1]["closeCode"] == 1009


def test_a_full_pod_is_not_stormed(pods: Pods, page: Any) -> None:
    """A pod that accepts sockets and closes them at once (full: 1013 before any welcome):
    the page backs off at least 2 s each time instead of reconnecting every 500 ms."""
    from websockets.sync.client import connect

    (pod,) = pods.start("web-full", ["--auth", "none", "--max-connections", "1"])
    with connect(f"{pod.ws_url}?user=holder") as holder:
        holder.recv(timeout=5)  # the welcome: the pod is full now
        refused = {"limit": "connections"}
        page.goto(f"{pod.http_url}/?user=late")
        wait_for_sync(lambda: pod.metric("clarion_limit_hits_total", refused) == 1, 10)
        page.wait_for_timeout(3000)
        assert pod.metric("clarion_limit_hits_total", refused) <= 2
        # Never welcomed, the client is still connecting (it emits no state change).
        assert page.locator("#state").inner_text() == "connecting"
