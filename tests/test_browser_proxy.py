"""A browser page whose application authenticates it by its session cookie (issue 21):
headless Chromium, a real pod with ``--connect-proxy`` to a real backend process, no JWT
anywhere in the page. The backend's answer decides the user and the channels; its no
stops the page (4503) instead of a reconnect loop."""

from __future__ import annotations

from typing import Any

import pytest

from .support import PodFactory, Vhost, wait_for_sync
from .test_browser import browser, connected, demo, page, publish  # noqa: F401 (fixtures)
from .test_connect_proxy import JWT_SECRET, PROXY_SECRET, Backend
from .test_connect_proxy import backend as backend

pytestmark = pytest.mark.timeout(90)


def proxied_pod(pod_factory: PodFactory, vhost: Vhost, backend: Backend) -> Any:
    args = [
        "--auth", "jwt", "--jwt-secret", JWT_SECRET, "--public-api",
        "--connect-proxy", backend.url, "--proxy-secret", PROXY_SECRET,
        "--proxy-cookies", "session", "--drain-delay", "0",
    ]  # fmt: skip
    (pod,) = pod_factory(1, "web-cookie", amqp_url=vhost.amqp_url, args=args)
    return pod


def open_as(page: Any, pod: Any, session: str, query: str = "") -> None:  # noqa: F811
    """The page of a user whose browser holds the application's session cookie."""
    page.context.add_cookies([{"name": "session", "value": session, "url": pod.http_url}])
    page.goto(f"{pod.http_url}/{query}")


def test_a_cookie_page_connects_through_the_connect_proxy_with_no_jwt(
    module_vhost: Vhost,
    pod_factory: PodFactory,
    backend: Backend,
    page: Any,  # noqa: F811
) -> None:
    from playwright.sync_api import expect

    pod = proxied_pod(pod_factory, module_vhost, backend)
    open_as(page, pod, "alice-web", "?channel=orders.eu")
    connected(page)
    # The backend named the user from the cookie (the page asked for a random one).
    expect(page.locator("#user")).to_have_text("alice-web")
    req = backend.connects()[-1]
    assert req["signed"] and req["body"]["cookies"] == {"session": "alice-web"}
    wait_for_sync(
        lambda: page.evaluate("window.demo.client.subscribe('orders.eu').state") == "subscribed",
        10,
        message="subscribed to orders.eu (the backend's channels)",
    )
    sent = [
        publish(pod, user="alice-web", data={"text": "to alice"}),
        publish(pod, channel="orders.eu", data={"text": "order"}),
        publish(pod, channel="news", data={"text": "news"}),  # the backend's subscription
    ]
    try:
        wait_for_sync(lambda: set(sent) <= set(demo(page, "ids")), 15, message="every message")
    except AssertionError:
        raise AssertionError(f"sent {sent}, seen {demo(page, 'ids')}") from None
    assert sorted(demo(page, "ids")) == sorted(sent)


def test_the_backends_no_stops_the_page(
    module_vhost: Vhost,
    pod_factory: PodFactory,
    backend: Backend,
    page: Any,  # noqa: F811
) -> None:
    pod = proxied_pod(pod_factory, module_vhost, backend)
    before = len(backend.connects())
    open_as(page, pod, "banned")
    wait_for_sync(
        lambda: any(s.get("code") == 4503 for s in demo(page, "states")),
        15,
        message="the 4503 close",
    )
    asked = len(backend.connects()) - before
    page.wait_for_timeout(2000)  # a reconnect loop would ask the backend again meanwhile
    assert len(backend.connects()) - before == asked == 1
    assert page.evaluate("window.demo.client.state") == "disconnected"
