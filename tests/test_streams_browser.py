"""The demo page (the JS client) in real headless Chromium behind a proxy that blocks WebSocket.

Debian's nginx in front of three real pods (round robin, no stickiness) answers
403 to every ``Upgrade`` and buffers responses unless told not to
(tests/test_streams_proxy.py's proxy), as corporate proxies do. The page's
client falls back to SSE by itself and shows it; user, channel and broadcast
messages arrive exactly once across a SIGKILL of its pod, a SIGTERM drain
(1001) and a restart of the broker (a private RabbitMQ node: never the shared
one), and it recovers each time with ``since``.
"""

# ruff: noqa: F811 (browser and page are test_browser's fixtures, imported)
from __future__ import annotations

import shutil
import signal
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from .private_broker import PrivateBroker
from .support import GatewayProcess, PodFactory, wait_for_sync
from .test_browser import (  # noqa: F401 (fixtures)
    DEV,
    browser,
    burst,
    codes,
    connected,
    demo,
    exactly_once,
    page,
    subscribed,
)
from .test_streams_proxy import Nginx

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.browser,
    pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx not installed"),
]


def ready(pod: GatewayProcess) -> bool:
    try:
        return httpx.get(f"{pod.http_url}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def alive(pods: list[GatewayProcess]) -> list[GatewayProcess]:
    return [p for p in pods if p.proc is not None and p.proc.poll() is None]


def back(page: Any, since: int, what: str) -> str:
    """The page dropped its connection after state ``since`` and is connected again: its pod."""

    def done() -> bool:
        states = demo(page, "states")[since:]
        drop = next((i for i, s in enumerate(states) if s["state"] == "connecting"), None)
        return drop is not None and any(s["state"] == "connected" for s in states[drop:])

    wait_for_sync(done, 30, message=f"the page back after {what}")
    return connected(page)


def test_the_demo_page_falls_back_to_sse_and_loses_nothing(
    module_private_broker: PrivateBroker, pod_factory: PodFactory, page: Any, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    broker = module_private_broker
    tag = uuid.uuid4().hex[:6]
    pods = pod_factory(3, "sseweb", amqp_url=broker.amqp_url, args=DEV, timeout=40)
    user = f"proxied-{tag}"
    with Nginx(tmp_path, pods, buffering=True) as proxy:
        by_name = {p.pod_name: p for p in pods}
        page.goto(f"{proxy.url}/?user={user}")
        holder = by_name[connected(page, 20_000)]
        expect(page.locator("#transport")).to_have_text("sse")
        subscribed(page)
        sent = burst(alive(pods)[-1], user, 2)
        wait_for_sync(lambda: len(demo(page, "ids")) == len(sent), 10, message="first burst")
        assert codes(page) == []  # the refused upgrade came before any connection

        # A SIGKILL of the pod holding the stream, then a drain of the next one.
        for how in ("kill", "drain"):
            since = len(demo(page, "states"))
            if how == "kill":
                holder.kill()
            else:
                holder.signal(signal.SIGTERM)
            sent += burst(next(p for p in alive(pods) if p is not holder), user, 2)
            now = by_name[back(page, since, how)]
            assert now is not holder
            holder = now
            sent += burst(holder, user, 1)

        # A broker restart: the pods go unready, keep their streams, and catch up after.
        since = len(demo(page, "states"))
        broker.stop()
        wait_for_sync(lambda: not any(ready(p) for p in alive(pods)), 20, message="unready")
        broker.start()
        wait_for_sync(lambda: all(ready(p) for p in alive(pods)), 40, message="ready again")
        sent += burst(holder, user, 2)
        exactly_once(page, holder, user, sent)

        expect(page.locator("#transport")).to_have_text("sse")
        assert codes(page)[:2] == [1006, 1001], demo(page, "states")
        assert all(r["recovered"] for r in demo(page, "recoveries")), demo(page, "recoveries")
        assert demo(page, "errors") == []
        if len(demo(page, "states")) > since:  # a stream dropped in the outage came back
            connected(page)
    for p in pods:
        assert "Traceback" not in p.log(), p.log()
