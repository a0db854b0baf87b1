"""Hypothesis against the parser and against a running pod.

A bad frame or body must get a clear answer (an error frame with ``code`` and
``message``, or a 400 with ``error`` and ``message``), never kill the pod, and
never disturb another client's session. One real pod (RabbitMQ in its own
vhost) serves the whole module; an innocent client keeps pinging it from a
thread while the fuzzer works.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from clarion.message import new_message_id
from clarion.protocol import ProtocolError, parse_client_frame, parse_publish_body

from .support import GatewayProcess, PodFactory, Vhost, wait_for_sync

MAX_FRAME_BYTES = 64 * 1024
MAX_BODY_BYTES = 64 * 1024
REPLY_TYPES = {"pong", "subscribed", "unsubscribed", "published", "error"}

# -- strategies -------------------------------------------------------------------

text = st.text(st.characters(exclude_categories=["Cs"]), max_size=300)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)  # also past 64 bits
    | st.floats(allow_nan=True, allow_infinity=True)  # json.dumps writes NaN/Infinity
    | text
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(text, children, max_size=5),
    max_leaves=25,
)
names = st.sampled_from(["news", "orders.eu", "", "x" * 257, "ü", "a/b"]) | text | json_values
ids = st.builds(new_message_id) | st.sampled_from(["", "0" * 36, str(uuid.uuid4())]) | json_values
frame_objects = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["subscribe", "unsubscribe", "publish", "ping", "PING", ""])
        | json_values,
        "channel": names,
        "since": ids,
        "user": names,
        "broadcast": st.just(True) | json_values,
        "data": json_values,
    },
)


good_names = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=256)
good_targets = (
    st.builds(lambda n: {"user": n}, good_names)
    | st.builds(lambda n: {"channel": n}, good_names)
    | st.just({"broadcast": True})
)
# Mostly valid: the paths behind the parser (publish, broker, fan-out) see odd data too.
good_frames = st.builds(
    lambda t, kind, d: json.dumps(
        {"type": "publish", **t, "data": d}
        if kind == "publish"
        else {"type": kind, "channel": next(iter(t.values())) if "broadcast" not in t else "c"}
    ),
    good_targets,
    st.sampled_from(["publish", "subscribe", "unsubscribe"]),
    json_values,
)
good_bodies = st.builds(
    lambda t, d: json.dumps({**t, "data": d}).encode(), good_targets, json_values
) | st.builds(
    lambda ms: json.dumps({"messages": ms}).encode(),
    st.lists(st.builds(lambda t, d: {**t, "data": d}, good_targets, json_values), max_size=5),
)


def _nested(depth: int, kind: str) -> str:
    if kind == "list":
        return "[" * depth + "]" * depth
    return '{"a":' * depth + "1" + "}" * depth


deep = st.builds(_nested, st.integers(1, 3000), st.sampled_from(["list", "dict"]))
truncated = st.builds(
    lambda s, n: s[: max(0, len(s) - n)], st.builds(json.dumps, frame_objects), st.integers(1, 5)
)
client_frames = (
    good_frames
    | st.builds(json.dumps, frame_objects)
    | st.builds(lambda o: json.dumps(o, ensure_ascii=False), frame_objects)
    | st.builds(json.dumps, json_values)
    | text
    | deep
    | truncated
    | st.sampled_from(["ping", " ping ", "pong", "{", "[]", "null", "1e999", '"ping"', "-"])
)
publish_objects = st.fixed_dictionaries(
    {},
    optional={
        "user": names,
        "channel": names,
        "broadcast": st.just(True) | json_values,
        "data": json_values,
    },
)
publish_bodies = (
    good_bodies
    | st.builds(lambda o: json.dumps(o).encode(), publish_objects)
    | st.builds(
        lambda ms: json.dumps({"messages": ms}).encode(),
        st.lists(publish_objects | json_values, max_size=5),
    )
    | st.builds(lambda o: json.dumps(o).encode(), json_values)
    | st.binary(max_size=300)
    | st.builds(lambda d: d.encode(), deep)
    | st.sampled_from([b"", b"{}", b'{"messages": []}', b"\xff\xfe", b"x" * (MAX_BODY_BYTES + 1)])
)

# -- pure unit fuzz ------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(client_frames)
def test_parse_client_frame_raises_only_protocol_errors(raw: str) -> None:
    try:
        frame = parse_client_frame(raw)
    except ProtocolError as exc:
        assert exc.code and exc.message
        return
    assert frame.type in ("ping", "subscribe", "unsubscribe", "publish", "text")
    if frame.type in ("subscribe", "unsubscribe"):
        assert isinstance(frame.channel, str) and 0 < len(frame.channel) <= 256
    if frame.type == "publish":
        assert frame.target is not None


@settings(max_examples=400, deadline=None)
@given(publish_bodies)
def test_parse_publish_body_raises_only_protocol_errors(raw: bytes) -> None:
    try:
        items, batch = parse_publish_body(raw)
    except ProtocolError as exc:
        assert exc.code and exc.message
        return
    assert items and (batch or len(items) == 1)
    for target, _, key in items:
        assert key is None or (isinstance(key, str) and 1 <= len(key) <= 256)
        assert target.kind in ("user", "channel", "broadcast")
        assert (target.name is None) == (target.kind == "broadcast")


# -- against a running pod -----------------------------------------------------------


@pytest.fixture(scope="module")
def pod(module_vhost: Vhost, module_pod_factory: PodFactory) -> GatewayProcess:
    args = [
        "--auth",
        "none",
        "--allow-client-publish",
        "--max-frames-per-second",
        "100000",  # fuzz the parser, not the rate limiter
        "--max-frame-bytes",
        str(MAX_FRAME_BYTES),
        "--max-body-bytes",
        str(MAX_BODY_BYTES),
    ]
    (p,) = module_pod_factory(1, "fuzz", amqp_url=module_vhost.amqp_url, args=args, timeout=30)
    return p


class Innocent(threading.Thread):
    """A well-behaved client on the same pod: pings every 50 ms and records what it gets."""

    def __init__(self, ws: ClientConnection) -> None:
        super().__init__(daemon=True)
        self.ws = ws
        self.user = json.loads(self.ws.recv(5))["user"]
        self.pong_times: list[float] = []
        self.messages: list[dict[str, Any]] = []
        self.others: list[Any] = []
        self.closed: ConnectionClosed | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        next_ping = 0.0
        try:
            while not self._halt.is_set():
                now = time.monotonic()
                if now >= next_ping:
                    self.ws.send('{"type":"ping"}')
                    next_ping = now + 0.05
                try:
                    raw = self.ws.recv(0.05)
                except TimeoutError:
                    continue
                frame = json.loads(raw)
                if frame.get("type") == "pong":
                    self.pong_times.append(time.monotonic())
                elif frame.get("type") == "message":
                    self.messages.append(frame)
                else:
                    self.others.append(frame)
        except ConnectionClosed as exc:
            self.closed = exc

    def finish(self) -> None:
        self._halt.set()
        self.join(5)

    def assert_unharmed(self, started: float) -> None:
        assert self.closed is None, f"the innocent client was disconnected: {self.closed}"
        assert not self.others, self.others[:3]
        times = [started, *self.pong_times, time.monotonic()]
        gap = max(b - a for a, b in itertools.pairwise(times))
        assert gap < 2.0, f"the innocent client waited {gap:.2f}s for a pong"


@pytest.fixture
def innocent(pod: GatewayProcess) -> Iterator[Innocent]:
    url = f"{pod.ws_url}?user=innocent-{uuid.uuid4().hex[:6]}"
    with connect(url, open_timeout=10, max_size=None) as ws:
        client = Innocent(ws)
        client.start()
        try:
            yield client
        finally:
            client.finish()


def assert_pod_healthy(pod: GatewayProcess) -> None:
    assert pod.proc is not None and pod.proc.poll() is None, pod.log()
    r = httpx.get(f"{pod.http_url}/healthz", timeout=5)
    assert r.status_code == 200
    log = pod.log_path.read_text(errors="replace")
    assert "Traceback" not in log and "session error" not in log, log[-3000:]


def _publish_to(pod: GatewayProcess, user: str, data: Any) -> str:
    r = httpx.post(f"{pod.http_url}/api/publish", json={"user": user, "data": data}, timeout=10)
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def _check_reply(frame: Any) -> None:
    if frame == "pong":  # the bare-text ping's answer
        return
    assert isinstance(frame, dict), frame
    if frame.get("type") == "error":
        assert isinstance(frame.get("code"), str) and frame["code"], frame
        assert isinstance(frame.get("message"), str) and frame["message"], frame
    else:
        assert frame.get("type") in REPLY_TYPES, frame


@pytest.mark.timeout(90)
def test_fuzz_frames_against_a_pod(pod: GatewayProcess, innocent: Innocent) -> None:
    started = time.monotonic()
    with connect(f"{pod.ws_url}?user=fuzzer", open_timeout=10, max_size=None) as ws:
        assert json.loads(ws.recv(5))["type"] == "welcome"
        stats = _fuzz_frames(ws)
        # Still one session: it answers, and it receives what is published to it.
        mid = _publish_to(pod, "fuzzer", "still here")
        while True:
            frame = json.loads(ws.recv(10))
            if isinstance(frame, dict) and frame.get("id") == mid:
                break
    # The innocent client was never disturbed and still gets its messages.
    mid = _publish_to(pod, innocent.user, {"hello": "innocent"})
    wait_for_sync(lambda: any(m["id"] == mid for m in innocent.messages), 10)
    innocent.assert_unharmed(started)
    assert_pod_healthy(pod)
    print(f"\nfuzz frames: {stats['examples']} examples, {stats['errors']} answered with an error")


def _fuzz_frames(ws: ClientConnection) -> dict[str, int]:
    counter = itertools.count()
    stats = {"examples": 0, "errors": 0}
    broke: list[str] = []  # the frame after which the socket died, if one did

    @settings(
        max_examples=200,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(client_frames)
    def one(raw: str) -> None:
        assert not broke, f"the socket was closed after the frame {broke[0][:300]!r}"
        n = next(counter)
        sentinel = {"type": "unsubscribed", "channel": f"sentinel-{n}"}
        replies = []
        try:
            ws.send(raw)
            ws.send(json.dumps({"type": "unsubscribe", "channel": f"sentinel-{n}"}))
            while True:
                got = ws.recv(10)
                frame = json.loads(got) if got != "pong" else got
                if frame == sentinel:
                    break
                if isinstance(frame, dict) and frame.get("type") == "message":
                    continue  # a broadcast from a fuzzed publish
                _check_reply(frame)
                replies.append(frame)
        except (ConnectionClosed, TimeoutError) as exc:
            broke.append(raw)
            raise AssertionError(f"socket failed after {raw[:300]!r}: {exc!r}") from None
        assert len(replies) == 1, (raw[:200], replies)
        stats["examples"] += 1
        stats["errors"] += isinstance(replies[0], dict) and replies[0].get("type") == "error"

    one()
    return stats


@pytest.mark.timeout(30)
def test_oversized_frame_closes_only_that_socket(pod: GatewayProcess, innocent: Innocent) -> None:
    started = time.monotonic()
    with connect(f"{pod.ws_url}?user=big", open_timeout=10, max_size=None) as ws:
        ws.recv(5)
        ws.send(json.dumps({"type": "ping", "pad": "x" * MAX_FRAME_BYTES}))
        with pytest.raises(ConnectionClosed) as info:
            while True:
                ws.recv(5)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1009
    mid = _publish_to(pod, innocent.user, "after the big one")
    wait_for_sync(lambda: any(m["id"] == mid for m in innocent.messages), 10)
    innocent.assert_unharmed(started)
    assert_pod_healthy(pod)


@pytest.mark.timeout(90)
def test_fuzz_publish_api(pod: GatewayProcess, innocent: Innocent) -> None:
    started = time.monotonic()
    statuses: dict[int, int] = {}
    http = httpx.Client(base_url=pod.http_url, timeout=10)

    @settings(
        max_examples=200,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(publish_bodies, st.sampled_from(["application/json", "text/plain", None]))
    def one(body: bytes, content_type: str | None) -> None:
        headers = {"content-type": content_type} if content_type else {}
        r = http.post("/api/publish", content=body, headers=headers)
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        assert r.status_code in (202, 400, 413), (body[:200], r.status_code, r.text[:300])
        obj = r.json()
        if r.status_code == 202:
            assert "id" in obj or (obj.get("ids")), obj
        else:
            assert isinstance(obj.get("error"), str) and obj["error"], obj
            assert isinstance(obj.get("message"), str) and obj["message"], obj

    try:
        one()
    finally:
        http.close()
    mid = _publish_to(pod, innocent.user, "after the API fuzz")
    wait_for_sync(lambda: any(m["id"] == mid for m in innocent.messages), 10)
    innocent.assert_unharmed(started)
    assert_pod_healthy(pod)
    print(f"\nfuzz publish API: answers {dict(sorted(statuses.items()))}")


@pytest.mark.timeout(60)
def test_fuzz_connect_query(pod: GatewayProcess, innocent: Innocent) -> None:
    """Odd ``user``/``since`` query values: a welcome (perhaps with an error frame) or a 4500."""
    started = time.monotonic()
    outcomes: dict[str, int] = {}

    @settings(
        max_examples=60,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(
        st.fixed_dictionaries(
            {},
            optional={
                "user": text | st.just("u" * 257),
                "since": st.builds(new_message_id) | text,
                "token": text,
            },
        )
    )
    def one(query: dict[str, str]) -> None:
        url = f"{pod.ws_url}?{urlencode(query)}"
        try:
            with connect(url, open_timeout=10, max_size=None, close_timeout=2) as ws:
                welcome = json.loads(ws.recv(10))
                assert welcome["type"] == "welcome", welcome
                if query.get("user"):
                    assert welcome["user"] == query["user"]
                ws.send("ping")
                replies = []
                while (got := ws.recv(10)) != "pong":
                    replies.append(json.loads(got))
                for r in replies:  # only a complaint about since, if anything
                    assert r.get("type") in ("error", "message"), r
                    if r["type"] == "error":
                        assert r["code"] == "bad_field" and "since" in r["message"], r
                outcome = "welcome"
        except ConnectionClosed as exc:
            assert exc.rcvd is not None and exc.rcvd.code == 4500, exc
            assert len(query.get("user", "")) > 256, query  # the only reason to refuse here
            outcome = "4500"
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    one()
    innocent.assert_unharmed(started)
    assert_pod_healthy(pod)
    print(f"\nfuzz connect query: {outcomes}")
