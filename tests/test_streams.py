"""HTTP streams (``GET /sse``, ``GET /stream``) keep the WebSocket's guarantees.

Real pods (``clarion serve`` processes on a real RabbitMQ vhost, or the real app
under a real uvicorn in-process), real HTTP clients: routed delivery across
pods, ``Last-Event-ID`` recovery exactly once, client frames posted to the pod
that does not hold the stream and forwarded to the one that does, tokens that
do not name the connection refused, the drain's last event, the bounded
buffer, keep-alives and the headers that stop proxy buffering.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from clarion.emulation import parse_token

from .sseclient import Stream
from .support import (
    GatewayProcess,
    InProcessPod,
    PodFactory,
    Vhost,
    loopbacks,
    wait_for,
    wait_for_sync,
)

pytestmark = pytest.mark.timeout(60)

KEY = {"Authorization": "Bearer k"}


@pytest.fixture(scope="module")
def pods(module_vhost: Vhost, module_pod_factory: PodFactory) -> Iterator[list[GatewayProcess]]:
    args = ["--auth", "none", "--api-key", "k", "--allow-client-publish"]
    url = module_vhost.amqp_url
    with module_pod_factory(2, "sse", amqp_url=url, args=args, hosts=loopbacks(60, 2)) as ps:
        yield ps
    for p in ps:
        assert "Traceback" not in p.log(), p.log()


@pytest.fixture
def pod() -> Iterator[InProcessPod]:
    with InProcessPod(auth="none", api_keys=["k"], stream_keepalive=0.2) as p:
        yield p


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as c:
        yield c


async def publish(http: httpx.AsyncClient, pod: GatewayProcess | InProcessPod, body: dict) -> str:
    r = await http.post(f"{pod.http_url}/api/publish", json=body, headers=KEY)
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


async def post(
    http: httpx.AsyncClient, pod: GatewayProcess, session: str, *frames: object
) -> httpx.Response:
    return await http.post(
        f"{pod.http_url}/emulation", json={"session": session, "frames": list(frames)}
    )


async def test_headers_welcome_and_keepalive(pod: InProcessPod) -> None:
    s = await Stream.open(f"{pod.http_url}/sse?user=u1")
    try:
        assert s.response is not None
        h = s.response.headers
        assert h["content-type"].startswith("text/event-stream")
        assert h["cache-control"] == "no-cache" and h["x-accel-buffering"] == "no"
        welcome = await s.wait_welcome()
        assert s.frames[0] is welcome  # the first event
        assert welcome["pod"] == pod.pod_name and welcome["user"] == "u1"
        assert welcome["transport"] == "sse" and welcome["conn"] and welcome["session"]
        # Nothing received yet: the welcome's id is its position (Last-Event-ID resumes there).
        assert s.ids[0] == welcome["position"] == s.last_event_id
        await s.until(lambda: s.comments >= 2, 5, "keep-alive comments")
        assert pod.metric("clarion_stream_connections", {"transport": "sse"}) == 1
        assert pod.metric("clarion_connections") == 1
    finally:
        await s.close()
    await wait_for(lambda: len(pod.gateway.hub) == 0, 5, message="stream forgotten")


async def test_ndjson_stream_and_curl(pod: InProcessPod, http: httpx.AsyncClient) -> None:
    s = await Stream.open(f"{pod.http_url}/stream?user=u2")
    curl = await asyncio.create_subprocess_exec(
        "curl", "-sN", f"{pod.http_url}/sse?user=u2", stdout=asyncio.subprocess.PIPE
    )
    try:
        assert s.response is not None
        assert s.response.headers["content-type"] == "application/x-ndjson"
        await s.wait_welcome()
        await wait_for(lambda: len(pod.gateway.hub) == 2, 5, message="curl connected")
        mid = await publish(http, pod, {"user": "u2", "data": "hi"})
        await s.until(lambda: s.data() == ["hi"], what="the message")
        assert curl.stdout is not None
        seen = b""
        while b'data: {"type":"message"' not in seen:
            seen += await asyncio.wait_for(curl.stdout.read(4096), 5)
        assert f"id: {mid}\n".encode() in seen
    finally:
        curl.kill()
        await curl.wait()
        await s.close()


async def test_malformed_last_event_id_is_answered_not_fatal(pod: InProcessPod) -> None:
    s = await Stream.open(f"{pod.http_url}/sse?user=u3", {"Last-Event-ID": "x" * 300})
    try:
        welcome = await s.wait_welcome()
        assert welcome["recovered"] is False and welcome["reason"] == "bad_since"
        err = await s.wait_type("error")
        assert err["code"] == "bad_field" and "since" in err["message"]
        assert s.ids[0] == welcome["position"]  # it resumes from now on
    finally:
        await s.close()


async def test_bad_requests_get_clear_errors(pod: InProcessPod, http: httpx.AsyncClient) -> None:
    r = await http.get(f"{pod.http_url}/sse?user=u&channel=orders.*")
    assert r.status_code == 400 and r.json()["error"] == "bad_field"
    r = await http.post(f"{pod.http_url}/sse?user=u")
    assert r.status_code == 405
    for body, code in [
        (b"{not json", "bad_json"),
        (b"[]", "bad_body"),
        (b'{"session": "a.b.c", "frames": []}', "bad_body"),
        (b'{"session": "a.b.c", "frames": [1]}', "bad_body"),
        (b'{"session": "a.b.c", "frames": ["ping"], "x": 1}', "bad_body"),
        (b'{"session": "nonsense", "frames": ["ping"]}', "bad_session"),
    ]:
        r = await http.post(f"{pod.http_url}/emulation", content=body)
        assert r.status_code == 400 and r.json()["error"] == code, (body, r.text)
    big = b'{"session": "a.b.c", "frames": ["' + b"x" * (2 << 20) + b'"]}'
    r = await http.post(f"{pod.http_url}/emulation", content=big)
    assert r.status_code == 413
    assert (await http.get(f"{pod.http_url}/healthz")).status_code == 200


async def test_delivery_across_pods_and_last_event_id_recovery_exactly_once(
    pods: list[GatewayProcess], http: httpx.AsyncClient
) -> None:
    a, b = pods
    user, channel = f"u-{uuid.uuid4().hex[:6]}", f"ch-{uuid.uuid4().hex[:6]}"
    s = await Stream.open(f"{a.http_url}/sse?user={user}&channel={channel}")
    sent = []
    try:
        await s.wait_welcome()
        await s.wait_type("subscribed")
        for target in ({"user": user}, {"channel": channel}, {"broadcast": True}):
            sent.append(await publish(http, b, {**target, "data": len(sent)}))
        await s.until(lambda: len(s.messages) == 3, what="three messages")
        assert [m["id"] for m in s.messages] == sent
        assert s.last_event_id == sent[-1]
    finally:
        await s.close()
    # Missed while away: the browser comes back (to the other pod) with Last-Event-ID.
    missed = [await publish(http, a, {"user": user, "data": "u"})]
    missed.append(await publish(http, b, {"channel": channel, "data": "c"}))
    last = s.last_event_id
    assert last is not None
    again = await Stream.open(
        f"{b.http_url}/sse?user={user}&channel={channel}&since={sent[0]}", {"Last-Event-ID": last}
    )
    try:
        welcome = await again.wait_welcome()
        assert welcome["recovered"] is True and welcome["missed"] == 1
        sub = await again.wait_type("subscribed")
        assert sub["recovered"] is True and sub["missed"] == 1
        await again.until(lambda: len(again.messages) == 2, what="the replay")
        live = await publish(http, a, {"user": user, "data": "live"})
        await again.until(lambda: len(again.messages) == 3, what="live after the replay")
        ids = [m["id"] for m in again.messages]
        assert ids == [*missed, live], ids  # each once, in publish order
        assert again.last_event_id == live
    finally:
        await again.close()


async def test_posted_frames_reach_the_holding_pod_through_the_broker(
    pods: list[GatewayProcess], http: httpx.AsyncClient
) -> None:
    a, b = pods
    user, channel = f"e-{uuid.uuid4().hex[:6]}", f"ch-{uuid.uuid4().hex[:6]}"
    s = await Stream.open(f"{a.http_url}/stream?user={user}")
    try:
        session = (await s.wait_welcome())["session"]
        assert parse_token(session)[0] == a.pod_name
        r = await post(http, b, session, {"type": "subscribe", "channel": channel}, "ping")
        assert r.status_code == 202 and r.json() == {"accepted": 2}, r.text
        assert (await s.wait_type("subscribed"))["channel"] == channel
        await s.until(lambda: "pong" in s.frames, what="pong")
        await publish(http, b, {"channel": channel, "data": "via-emulation"})
        await s.until(lambda: s.data() == ["via-emulation"], what="the channel message")
        r = await post(http, b, session, {"type": "publish", "user": user, "data": "mine"})
        assert r.status_code == 202
        published = await s.wait_type("published")
        await s.until(lambda: published["id"] in [m["id"] for m in s.messages], what="own")
        r = await post(http, a, session, {"type": "unsubscribe", "channel": channel})
        assert r.status_code == 202
        assert (await s.wait_type("unsubscribed"))["channel"] == channel
        assert b.metric("clarion_emulation_posts_total", {"status": "202"}) >= 2
    finally:
        await s.close()


async def test_forged_foreign_and_unknown_connections_are_refused(
    pods: list[GatewayProcess], http: httpx.AsyncClient
) -> None:
    a, b = pods
    alice = await Stream.open(f"{a.http_url}/sse?user=alice")
    mallory = await Stream.open(f"{a.http_url}/sse?user=mallory")
    try:
        token = (await alice.wait_welcome())["session"]
        own = (await mallory.wait_welcome())["session"]
        pod64, conn64, mac = token.split(".")
        # Mallory's valid token, pointed at Alice's connection: refused on either pod.
        foreign = ".".join([pod64, conn64, own.split(".")[2]])
        forged = ".".join([pod64, conn64, ("A" if mac[0] != "A" else "B") + mac[1:]])
        for via in (a, b):
            for bad in (foreign, forged):
                r = await post(http, via, bad, {"type": "subscribe", "channel": "secret"})
                assert r.status_code == 403 and r.json()["error"] == "forbidden", r.text
        # A connection the pod never had, and a pod that does not exist.
        gone = ".".join([pod64, "bm8tc3VjaC1jb25u", mac])
        r = await post(http, b, gone, "ping")
        assert r.status_code == 404 and r.json()["error"] == "unknown_connection", r.text
        nopod = ".".join(["bm8tc3VjaC1wb2Q", conn64, mac])
        r = await post(http, b, nopod, "ping")
        assert r.status_code == 404 and "not running" in r.json()["message"], r.text
        assert not alice.of_type("subscribed") and "pong" not in alice.frames
    finally:
        await alice.close()
        await mallory.close()

    async def refused() -> bool:
        return (await post(http, a, token, "ping")).status_code == 404

    await wait_for(refused, 5, message="a closed stream's token refused")


async def test_posted_frames_are_rate_limited_as_websocket_frames(
    pods: list[GatewayProcess], http: httpx.AsyncClient
) -> None:
    a, b = pods
    s = await Stream.open(f"{a.http_url}/stream?user=flood")
    try:
        session = (await s.wait_welcome())["session"]
        statuses = []
        began = time.monotonic()
        for _ in range(10):  # 1,000 frames, 100 per POST, half of them to the other pod
            for via in (a, b):
                r = await post(http, via, session, *(["ping"] * 50))
                statuses.append(r.status_code)
        assert set(statuses) <= {202, 429}, statuses
        await s.until(lambda: s.of_type("error"), what="rate_limited")
        errors = s.of_type("error")
        assert {e["code"] for e in errors} == {"rate_limited"}
        took = time.monotonic() - began
        pongs = s.frames.count("pong")
        # The burst (100) and what 50 a second refill meanwhile, as for a WebSocket.
        assert pongs <= 100 + 50 * took + 5, (pongs, took)
        await publish(http, a, {"user": "flood", "data": "still"})
        await s.until(lambda: "still" in s.data(), what="still delivered")
    finally:
        await s.close()


async def test_drain_ends_the_stream_with_a_close_event_and_retry(
    pod_factory: PodFactory,
) -> None:
    args = ["--auth", "none", "--drain-delay", "0", "--drain-window", "0"]
    (pod,) = pod_factory(1, "sse-drain", args=args, start=False)
    try:
        await asyncio.to_thread(pod_factory.start, [pod], 20)
        s = await Stream.open(f"{pod.http_url}/sse?user=d")
        await s.wait_welcome()
        pod.signal(signal.SIGTERM)
        close = await s.wait_type("close")
        assert close["code"] == 1001 and close["reconnect"] is True
        assert "reconnect" in close["action"]
        assert s.retry is not None and 200 <= s.retry <= 2000 and s.retry == close["retry"]
        await s.wait_ended()
        await s.close()
        assert pod.proc is not None
        assert await asyncio.to_thread(pod.proc.wait, 10) == 0
        assert "Traceback" not in pod.log()
    finally:
        pod.kill()
        pod.stop()


def test_a_stream_that_stops_reading_hits_the_bounded_buffer() -> None:
    with InProcessPod(
        auth="none", api_keys=["k"], send_buffer_messages=5, send_buffer_bytes=1 << 20
    ) as pod:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect((pod.host, pod.port))
        s.sendall(f"GET /sse?user=slow HTTP/1.1\r\nHost: {pod.host}\r\n\r\n".encode())
        s.settimeout(5)
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
        wait_for_sync(lambda: pod.gateway.hub.connections, 5, message="registered")
        with httpx.Client(headers=KEY, timeout=10) as http:
            for _ in range(60):
                r = http.post(
                    f"{pod.http_url}/api/publish", json={"broadcast": True, "data": "x" * 65536}
                )
                assert r.status_code == 202
                if not pod.gateway.hub.connections:
                    break
        assert not pod.gateway.hub.connections, "the stalled stream was never cut off"
        assert pod.metric("clarion_connections_closed_total", {"reason": "slow_client"}) == 1
        # The stream ends: with its close event once the client reads what was sent
        # before, or with a reset if it reads nothing for writer.CLOSE_TIMEOUT.
        s.settimeout(15)
        tail = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := s.recv(1 << 20):
                tail = (tail + chunk)[-4096:]
        s.close()
        assert b'"code":1013' in tail and b"slow consumer" in tail, tail[-300:]
        assert pod.metric("clarion_stream_connections", {"transport": "sse"}) == 0


@pytest.mark.parametrize("path", ["/sse", "/stream"])
async def test_sigint_ends_open_streams_with_their_close_frame(
    pod_factory: PodFactory, path: str
) -> None:
    """SIGINT stops at once, without a drain: an open stream gets its last close frame
    (1001, server shutting down) instead of being cancelled by uvicorn's graceful-shutdown
    timeout (an ASGI error with a traceback), and the process exits 0 soon."""
    (pod,) = pod_factory(1, "sse-int", start=False)
    try:
        await asyncio.to_thread(pod_factory.start, [pod], 20)
        s = await Stream.open(f"{pod.http_url}{path}?user=i")
        await s.wait_welcome()
        stopped = time.monotonic()
        pod.signal(signal.SIGINT)
        close = await s.wait_type("close")
        assert close["code"] == 1001 and close["reason"] == "server shutting down"
        await s.wait_ended()
        await s.close()
        assert pod.proc is not None
        assert await asyncio.to_thread(pod.proc.wait, 10) == 0
        assert time.monotonic() - stopped < 3  # uvicorn's graceful timeout is 3 s
        assert "Traceback" not in pod.log(), pod.log()
    finally:
        pod.kill()


def _raw_exchange(pod: InProcessPod, request: bytes, timeout: float = 5.0) -> bytes:
    """Send ``request``; what the server answers until it closes the socket (which it
    must within ``timeout``)."""
    deadline = time.monotonic() + timeout
    with socket.create_connection((pod.host, pod.port), timeout=timeout) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
            assert time.monotonic() < deadline, f"still open after {timeout}s: {data[:200]!r}"
        return data


@pytest.mark.parametrize("path", ["/sse", "/stream", "/emulation"])
@pytest.mark.parametrize(
    "extra",
    [
        "X-Big: " + "b" * 9_000 + "\r\n",  # one header line over 8 KiB
        "X-Big: " + "b" * 1_000_000 + "\r\n",  # a megabyte, held for the stream's life
        "Last-Event-ID: " + "1" * 9_000 + "\r\n",
        "".join(f"X-H{i}: v\r\n" for i in range(300)),  # too many headers
    ],
    ids=["long-header", "megabyte-header", "long-last-event-id", "many-headers"],
)
def test_oversized_headers_get_431_as_on_websocket(
    pod: InProcessPod, path: str, extra: str
) -> None:
    """The WebSocket's limits (websockets: 8 KiB a header line, 128 headers) hold on the
    streams too: a stream would hold its request's headers for hours."""
    method = "POST" if path == "/emulation" else "GET"
    body = '{"session": "a.b.c", "frames": ["ping"]}' if method == "POST" else ""
    request = (
        f"{method} {path}?user=u HTTP/1.1\r\nHost: x\r\n{extra}"
        f"Content-Length: {len(body)}\r\n\r\n{body}"
    )
    data = _raw_exchange(pod, request.encode())
    assert data.startswith(b"HTTP/1.1 431"), data[:200]
    assert b'"headers_too_large"' in data
    assert not pod.gateway.hub.connections


def test_headers_just_under_the_limits_open_a_stream(pod: InProcessPod) -> None:
    extra = "X-Big: " + "b" * 8_000 + "\r\n" + "".join(f"X-H{i}: v\r\n" for i in range(100))
    with socket.create_connection((pod.host, pod.port), timeout=5) as s:
        s.sendall(f"GET /sse?user=u HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode())
        assert s.recv(4096).startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize(
    "value",
    ["not-an-id", "01a24ce4-d34f-7000-8000-00000000000", "01A24CE4-D34F-7000-8000-000000000000x"],
    ids=["word", "one-short", "trailing"],
)
async def test_malformed_last_event_ids_are_answered_not_fatal(
    pod: InProcessPod, value: str
) -> None:
    """The class of malformed ids (beside the long one above): a welcome that says
    ``bad_since``, an error frame, and the stream goes on from now."""
    s = await Stream.open(f"{pod.http_url}/sse?user=u4", {"Last-Event-ID": value})
    try:
        welcome = await s.wait_welcome()
        assert welcome["recovered"] is False and welcome["reason"] == "bad_since"
        assert (await s.wait_type("error"))["code"] == "bad_field"
    finally:
        await s.close()


def test_a_post_body_at_the_limit_is_read_and_one_byte_over_is_413(pod: InProcessPod) -> None:
    limit = pod.gateway.settings.max_body_bytes
    head = b'{"session": "nonsense", "frames": ["'
    tail = b'"]}'
    with httpx.Client(timeout=10) as http:
        for size, status in ((limit, 400), (limit + 1, 413)):
            body = head + b"x" * (size - len(head) - len(tail)) + tail
            r = http.post(f"{pod.http_url}/emulation", content=body)
            assert r.status_code == status, (size, r.text[:200])
