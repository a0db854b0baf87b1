"""Webhooks and join/leave frames: cluster-wide transitions, each sent by exactly one pod."""

from __future__ import annotations

import asyncio
import itertools
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import orjson
import pytest

from clarion import webhooks
from clarion.config import Settings
from clarion.hub import Hub
from clarion.message import Envelope, Target
from clarion.metrics import Metrics
from clarion.occupancy import Occupancy, Tally, owner
from testkit.net import free_port

from .support import GatewayProcess, PodFactory, Pods, Vhost, wait_for
from .wsclient import Client

pytestmark = pytest.mark.timeout(60)

SECRET = "s3cret-for-tests"
SLOW, HANG_UP = -1, -2
AUTH = {"Authorization": "Bearer k"}


# -- the pure decisions ------------------------------------------------------------


def test_rendezvous_owner_is_stable_and_moves_only_what_it_must() -> None:
    pods = [f"pod-{i}" for i in range(5)]
    keys = [("channel", f"c{i}") for i in range(2000)] + [("user", f"u{i}") for i in range(2000)]
    before = {k: owner(k, pods) for k in keys}
    assert before == {k: owner(k, list(reversed(pods))) for k in keys}  # order-free
    shares = [sum(1 for o in before.values() if o == p) for p in pods]
    assert min(shares) > len(keys) / len(pods) * 0.8, shares  # spread evenly
    after = {k: owner(k, [*pods, "pod-new"]) for k in keys}
    moved = [k for k in keys if after[k] != before[k]]
    assert all(after[k] == "pod-new" for k in moved)  # a newcomer takes, nobody swaps
    assert 0.1 < len(moved) / len(keys) < 0.25  # about 1/6
    fewer = {k: owner(k, pods[1:]) for k in keys}
    assert all(fewer[k] == before[k] for k in keys if before[k] != "pod-0")
    # A channel's members are decided where the channel is.
    assert owner(("member", "c7", "alice"), pods) == owner(("channel", "c7"), pods)


def test_tally_fires_on_the_cluster_transitions_only() -> None:
    t, c = Tally(), ("channel", "c")
    assert t.change("a", c, True) is True  # first pod: occupied
    assert t.change("b", c, True) is False
    assert t.change("a", c, True) is False  # a repeat changes nothing
    assert t.change("a", c, False) is False
    assert t.change("x", c, False) is False  # a pod that never held it
    assert t.change("b", c, False) is True  # last pod: vacated
    assert t.change("b", c, False) is False
    assert t.holders == {}


def test_tally_sync_replaces_a_pods_part_and_takes_new_keys_silently() -> None:
    t, c1, c2, c3 = Tally(), ("channel", "1"), ("channel", "2"), ("channel", "3")
    t.change("a", c1, True)
    t.change("a", c2, True)
    t.change("b", c2, True)
    # a now holds c3 (taken over from another owner: no event), and no longer c1 or c2.
    assert t.sync("a", [c3]) == [c1]  # c1 vacated; c2 still held by b
    assert t.holders == {c2: {"b"}, c3: {"a"}}
    assert t.forget("b") == [c2]  # a dead pod's lone keys are vacated
    t.drop(lambda k: k != c3)
    assert t.holders == {}


class FakePresence:
    """Presence's members, as Occupancy reads them (no broker)."""

    def __init__(self, pod_name: str, members: list[str]) -> None:
        self.pod_name, self.interval, self.members = pod_name, 1.0, members

    def alive(self) -> list[str]:
        return sorted(self.members)


async def test_a_takeover_sends_the_net_events_once() -> None:
    fired: list[tuple[Any, bool]] = []
    sent: list[tuple[str, dict[str, Any]]] = []

    async def publish(command: str, args: dict[str, Any]) -> None:
        sent.append((command, args))

    presence = FakePresence("b", ["a", "c"])
    occ = Occupancy(
        Hub(Metrics(), "b"),
        presence,  # type: ignore[arg-type]
        publish,
        lambda key, up: fired.append((key, up)),
        frozenset({"channel"}),
    )
    occ._settled = True
    x = owned_by("b", "channel", "x", ["a", "b", "c"])
    key = ["channel", x]

    def command(pod: str, **args: Any) -> None:
        body = {"pod": pod, **args}
        occ.on_command(Envelope.create_command("occupancy", Target("broadcast"), body))

    occ.refresh()  # b now knows a and c: it owns x, and waits for their syncs
    await asyncio.sleep(0)  # the sync goes out from a task
    assert sent[-1][1]["ask"] is True
    command("a", sync={"b": [key]})  # a and c held x already (its old owner announced it)
    command("a", changes={"b": [[False, *key]]})  # a leaves: x looks empty, c has not synced
    assert fired == []
    command("c", sync={"b": [key]})  # the window closes: x is held, nothing to send
    assert fired == []
    command("c", changes={"b": [[False, *key]]})
    assert fired == [(("channel", x), False)]  # one vacated, not two
    command("c", changes={"b": [[True, *key]]})
    assert fired[-1] == (("channel", x), True)


def test_signature_verifies_and_refuses_tampering_and_staleness() -> None:
    body, now = b'{"event":"user_online"}', str(int(time.time()))
    sig = webhooks.sign(SECRET, now, body)
    assert sig.startswith("sha256=") and len(sig) == 7 + 64
    assert webhooks.verify(SECRET, now, body, sig)
    assert not webhooks.verify("other", now, body, sig)
    assert not webhooks.verify(SECRET, now, body + b" ", sig)
    assert not webhooks.verify(SECRET, str(int(now) + 1), body, sig)  # the timestamp is signed
    old = str(int(time.time()) - 301)
    assert not webhooks.verify(SECRET, old, body, webhooks.sign(SECRET, old, body))
    assert not webhooks.verify(SECRET, "soon", body, sig)


def test_backoff_doubles_up_to_a_ceiling() -> None:
    assert [webhooks.backoff(n, 0.5) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert webhooks.backoff(20, 0.5) == webhooks.MAX_BACKOFF


def settings(**kw: Any) -> Settings:
    base: dict[str, Any] = {"auth": "none", "pod_name": "p", "webhook_secret": SECRET}
    return Settings(**{**base, **kw})


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hook",
        "https://hooks.example.com/x?a=1",
        "http://[::1]:8080/",
        "HTTP://example.com",
    ],
)
def test_good_webhook_urls_are_taken(url: str) -> None:
    settings(webhook_url=url).validate()


@pytest.mark.parametrize(
    "url",
    [
        "",
        "example.com/hook",
        "ftp://example.com/hook",
        "file:///etc/passwd",
        "ws://example.com/hook",
        "http://",
        "http:///path",
        "http://host:0/",
        "http://host:99999/",
        "http://host:port/",
        "http://host/a b",
        "http://host/#frag",
    ],
)
def test_bad_webhook_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="webhook-url"):
        settings(webhook_url=url).validate()


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"webhook_secret": None}, "webhook-secret"),
        ({"webhook_secret": ""}, "webhook-secret"),
        ({"webhook_events": ["channel_occupied", "user_joined"]}, "user_joined"),
        ({"webhook_events": ["Channel_Occupied"]}, "unknown"),
        ({"webhook_events": []}, "at least one"),
        ({"webhook_queue_size": 0}, "queue-size"),
        ({"webhook_retries": -1}, "retries"),
        ({"webhook_retry_delay": 0.0}, "retry-delay"),
        ({"webhook_timeout": float("nan")}, "timeout"),
    ],
)
def test_bad_webhook_settings_are_refused(kw: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        settings(webhook_url="http://127.0.0.1:9/", **kw).validate()


def test_a_pod_with_bad_webhook_settings_refuses_to_start(pod_factory: PodFactory) -> None:
    args = ["--auth", "none", "--webhook-url", "http://127.0.0.1:9/"]
    (pod,) = pod_factory(1, "bad-hook", args=args, start=False)
    pod.start()
    assert pod.proc is not None
    assert pod.proc.wait(20) != 0
    assert "--webhook-url needs --webhook-secret" in pod.log()


# -- a real receiver and real pods ----------------------------------------------------


class Receiver:
    """An HTTP server on a loopback port that records every POST and answers as told."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        #: Statuses to answer, in turn, to requests about a name; then 200.
        #: SLOW: answer after 2 s (past the pods' 0.5 s timeout); HANG_UP: close, no answer.
        self.script: dict[str, list[int]] = {}
        #: Cleared: requests wait (a stuck receiver) until it is set.
        self.open = threading.Event()
        self.open.set()
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a real receiver would

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.open.wait(30)
                event = orjson.loads(body)
                name = event.get("channel") or event.get("user")
                with receiver.lock:
                    statuses = receiver.script.get(name, [])
                    status = statuses.pop(0) if statuses else 200
                    receiver.requests.append(
                        {
                            "body": body,
                            "event": event,
                            "status": status,
                            "at": time.monotonic(),
                            **dict(self.headers),
                        }
                    )
                if status == HANG_UP:
                    self.close_connection = True
                    return
                if status == SLOW:
                    time.sleep(2)
                    self.close_connection = True
                self.send_response(200 if status == SLOW else status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port("127.0.0.1")), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.open.set()
        self.server.shutdown()
        self.server.server_close()

    def about(self, name: str) -> list[dict[str, Any]]:
        with self.lock:
            return [
                r
                for r in self.requests
                if name in (r["event"].get("channel"), r["event"].get("user"))
            ]

    def events(self, name: str, ok_only: bool = True) -> list[str]:
        return [r["event"]["event"] for r in self.about(name) if r["status"] == 200 or not ok_only]


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def hook_args(url: str, *extra: str) -> list[str]:
    return [
        "--auth", "none", "--api-key", "k", "--presence-interval", "1",
        "--webhook-url", url, "--webhook-secret", SECRET,
        "--webhook-retry-delay", "0.2", "--webhook-timeout", "0.5", "--join-leave", *extra,
    ]  # fmt: skip


def hook_pods(
    factory: PodFactory, prefix: str, count: int, vhost: Vhost, url: str, *extra: str
) -> Pods:
    """Pods with webhooks to ``url``, made (not started: ``factory.start``)."""
    args = hook_args(url, *extra)
    return factory(count, prefix, amqp_url=vhost.amqp_url, args=args, start=False)


def get(pod: GatewayProcess, path: str, **params: str) -> httpx.Response:
    return httpx.get(f"{pod.http_url}{path}", params=params, headers=AUTH, timeout=10)


async def all_know_each_other(pods: list[GatewayProcess]) -> None:
    names = sorted(p.pod_name for p in pods)

    def known() -> bool:
        return all(get(p, "/api/presence", user="x").json()["answered"] == names for p in pods)

    await wait_for(known, 15, 0.2, "every pod knows the others")


@pytest.fixture(scope="module")
def pods(
    module_vhost: Vhost, receiver: Receiver, module_pod_factory: PodFactory
) -> Iterator[list[GatewayProcess]]:
    made = hook_pods(module_pod_factory, "hook", 3, module_vhost, receiver.url)
    with module_pod_factory.start(made) as pods:
        asyncio.run(all_know_each_other(pods))
        yield pods


async def settled(receiver: Receiver, pods: list[GatewayProcess]) -> None:
    """Every pod's queue empty and nothing new at the receiver for a moment."""
    seen = [-1]

    def quiet() -> bool:
        n = len(receiver.requests)
        same, seen[0] = n == seen[0], n
        return same and all(p.metric("clarion_webhook_queue_length") == 0 for p in pods)

    await wait_for(quiet, 10, 0.3, "webhooks settled")


def owned_by(pod: str, kind: str, prefix: str, names: list[str]) -> str:
    """A fresh channel or user name that ``pod`` owns among ``names``."""
    tag = uuid.uuid4().hex[:6]
    candidates = (f"{prefix}-{tag}-{i}" for i in range(1000))
    return next(n for n in candidates if owner((kind, n), names) == pod)


async def connect(pod: GatewayProcess, user: str, *channels: str) -> Client:
    c = await Client.connect(f"{pod.ws_url}?user={user}", user)
    await c.wait_welcome()
    for ch in channels:
        await c.send({"type": "subscribe", "channel": ch})
        await c.wait_reply("subscribed")
    return c


async def test_one_event_per_cluster_transition_signed_by_its_owner(
    pods: list[GatewayProcess], receiver: Receiver
) -> None:
    tag = uuid.uuid4().hex[:6]
    channel, alice, bob = f"room-{tag}", f"alice-{tag}", f"bob-{tag}"
    names = [p.pod_name for p in pods]
    a1 = await connect(pods[0], alice, channel)
    a2 = await connect(pods[1], alice, channel)  # alice twice, on two pods
    b = await connect(pods[2], bob)
    await wait_for(lambda: receiver.events(channel) and receiver.events(bob), 10)
    await wait_for(lambda: receiver.events(alice), 10)
    await settled(receiver, pods)
    assert receiver.events(channel) == ["channel_occupied"]
    assert receiver.events(alice) == ["user_online"]
    assert receiver.events(bob) == ["user_online"]

    await a1.close()  # alice is still on pod 1: nothing changes cluster-wide
    await b.close()
    await wait_for(lambda: receiver.events(bob) == ["user_online", "user_offline"], 10)
    await a2.close()
    await wait_for(lambda: len(receiver.events(channel)) == 2 and len(receiver.events(alice)) == 2)
    await settled(receiver, pods)
    assert receiver.events(channel) == ["channel_occupied", "channel_vacated"]
    assert receiver.events(alice) == ["user_online", "user_offline"]

    for name, key in [(channel, ("channel", channel)), (alice, ("user", alice))]:
        for r in receiver.about(name):
            assert r[webhooks.POD_HEADER] == owner(key, names)  # sent by the owner alone
            sig, ts = r[webhooks.SIGNATURE_HEADER], r[webhooks.TIMESTAMP_HEADER]
            assert webhooks.verify(SECRET, ts, r["body"], sig)
            event = r["event"]
            assert set(event) == {"event", key[0], "ts", "id"}
            assert abs(event["ts"] / 1000 - time.time()) < 30
    sent = sum(p.metric("clarion_webhook_events_total", {"result": "sent"}) for p in pods)
    assert sent >= 6


async def test_a_receiver_answering_500_or_late_or_not_gets_the_event_again(
    pods: list[GatewayProcess], receiver: Receiver
) -> None:
    channel = f"retry-{uuid.uuid4().hex[:6]}"
    receiver.script[channel] = [500, SLOW, 503, HANG_UP]
    c = await connect(pods[1], "retrier", channel)
    await wait_for(lambda: receiver.events(channel), 10, message="the event after four failures")
    tries = receiver.about(channel)
    assert [r["status"] for r in tries] == [500, SLOW, 503, HANG_UP, 200]
    gaps = [b["at"] - a["at"] for a, b in itertools.pairwise(tries)]
    # Backoff 0.2, 0.4, 0.8 s (after the 0.5 s timeout); a hang-up on a kept connection is
    # sent again at once on a fresh one.
    # (Measured at the receiver, which notes a request after reading it: a little slack.)
    assert gaps[0] >= 0.18 and gaps[1] >= 0.85 and gaps[2] >= 0.75 and gaps[3] < 0.2, gaps
    assert len({r["event"]["id"] for r in tries}) == 1  # the same event, sent again
    await c.close()


async def test_join_and_leave_frames_once_per_user_in_the_cluster(
    pods: list[GatewayProcess], receiver: Receiver
) -> None:
    tag, names = uuid.uuid4().hex[:6], [p.pod_name for p in pods]
    channel = f"chat-{tag}"
    carol = await connect(pods[0], "carol", channel)
    d1 = await connect(pods[1], "dave", channel)
    frame = await carol.wait_reply("join")
    assert frame == {"type": "join", "channel": channel, "user": "dave"}
    # A second socket: no second join. Pods' transitions race each other (docs/server-api.md), so
    # wait until the owner has pod 2's: a channel it also owns, subscribed after, is seen.
    marker = owned_by(owner(("channel", channel), names), "channel", "mark", names)
    d2 = await connect(pods[2], "dave", channel, marker)
    await wait_for(lambda: receiver.events(marker), 10, message="the owner saw pod 2's change")
    await d1.close()  # dave is still there on pod 2: no leave
    await d2.close()
    frame = await carol.wait_reply("leave")
    assert frame == {"type": "leave", "channel": channel, "user": "dave"}
    kinds = [f.get("type") for f in carol.frames]
    assert kinds.count("join") == 1 and kinds.count("leave") == 1, kinds
    await carol.close()


async def test_a_full_queue_drops_and_counts(vhost: Vhost, pod_factory: PodFactory) -> None:
    stuck = Receiver()
    stuck.open.clear()
    [pod] = hook_pods(
        pod_factory, "hook-full", 1, vhost, stuck.url, "--webhook-queue-size", "2",
        "--webhook-timeout", "20",
    )  # fmt: skip
    try:
        with pod_factory.start([pod]):
            channels = [f"full-{i}" for i in range(6)]
            c = await connect(pod, "filler", *channels)  # 7 events: 1 in flight, 2 queued
            labels = {"result": "dropped"}
            await wait_for(lambda: pod.metric("clarion_webhook_events_total", labels) >= 4, 10)
            assert pod.metric("clarion_webhook_queue_length") <= 2
            dropped = pod.metric("clarion_webhook_events_total", labels)
            stuck.open.set()
            await wait_for(lambda: pod.metric("clarion_webhook_queue_length") == 0, 10)
            await wait_for(lambda: len(stuck.requests) == 7 - dropped, 10)
            assert pod.metric("clarion_webhook_events_total", labels) == dropped
            await c.close()
    finally:
        stuck.close()


async def test_a_killed_pods_users_go_offline_from_their_owner(
    vhost: Vhost, receiver: Receiver, pod_factory: PodFactory
) -> None:
    with pod_factory.start(hook_pods(pod_factory, "hook-kill", 2, vhost, receiver.url)) as pods:
        await all_know_each_other(pods)
        names = [p.pod_name for p in pods]
        # A user that pod 0 owns, connected to pod 1, which dies.
        user = owned_by(names[0], "user", "eve", names)
        c = await connect(pods[1], user)
        await wait_for(lambda: receiver.events(user) == ["user_online"], 10)
        assert not c.closed
        pods[1].signal(signal.SIGKILL)
        killed = time.monotonic()
        await wait_for(lambda: receiver.events(user) == ["user_online", "user_offline"], 10)
        took = time.monotonic() - killed
        assert took < 5, f"offline {took:.1f}s after the kill (three presence intervals: 3 s)"


async def test_a_stopping_pods_users_go_offline_at_once_whoever_owns_them(
    vhost: Vhost, receiver: Receiver, pod_factory: PodFactory
) -> None:
    drain_now = ["--drain-delay", "0", "--drain-window", "0"]
    made = hook_pods(pod_factory, "hook-stop", 2, vhost, receiver.url, *drain_now)
    with pod_factory.start(made) as pods:
        await all_know_each_other(pods)
        names = [p.pod_name for p in pods]
        # Both on pod 1, which stops: one owned by pod 0, one by pod 1 itself.
        users = [owned_by(n, "user", "sam", names) for n in names]
        clients = [await connect(pods[1], u) for u in users]
        for u in users:
            await wait_for(lambda u=u: receiver.events(u) == ["user_online"], 10)
        pods[1].signal(signal.SIGTERM)
        for u in users:  # long before three presence intervals
            await wait_for(lambda u=u: len(receiver.events(u)) == 2, 2.5, message=f"{u} offline")
            assert receiver.events(u) == ["user_online", "user_offline"]
        assert all(c.closed for c in clients)


async def test_a_new_pod_takes_its_names_over_without_repeating_them(
    vhost: Vhost, receiver: Receiver, pod_factory: PodFactory
) -> None:
    made = hook_pods(pod_factory, "hook-new", 3, vhost, receiver.url)
    names = [p.pod_name for p in made]
    # A channel that pod 0 owns among two pods, and the newcomer (pod 2) among three.
    channel = next(
        c for c in (owned_by(names[2], "channel", "moved", names) for _ in range(100))
        if owner(("channel", c), names[:2]) == names[0]
    )  # fmt: skip
    with pod_factory.start(made[:2]) as pods:
        await all_know_each_other(pods)
        c0, c1 = await connect(pods[0], "una", channel), await connect(pods[1], "ben", channel)
        await wait_for(lambda: receiver.events(channel) == ["channel_occupied"], 10)
        with pod_factory.start(made[2:]):
            await all_know_each_other(made)
            await c0.close()
            await c1.close()
            await wait_for(lambda: len(receiver.events(channel)) >= 2, 10)
            await settled(receiver, made)
            assert receiver.events(channel) == ["channel_occupied", "channel_vacated"]
            assert receiver.about(channel)[1][webhooks.POD_HEADER] == names[2]  # the new owner
