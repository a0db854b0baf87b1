"""The demo page in a real headless Chromium: after its pod dies it reconnects
with backoff, and with `since=` it shows what it missed meanwhile."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .support import CHROMIUM, CHROMIUM_ARGS, GatewayProcess, Vhost, running_pods

pytestmark = [pytest.mark.timeout(90), pytest.mark.browser]


@pytest.fixture
def two_pods(vhost: Vhost, tmp_path: Path) -> Iterator[list[GatewayProcess]]:
    with running_pods("web", 2, 40, vhost.amqp_url, tmp_path) as pods:
        yield pods


def test_demo_page_reconnects_and_recovers_what_it_missed(
    two_pods: list[GatewayProcess], vhost: Vhost, tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    page_pod, api_pod = two_pods
    api = f"{api_pod.http_url}/api/publish"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(f"{page_pod.http_url}/?user=shopper")
            expect(page.locator("#state")).to_have_text("open", timeout=10_000)
            expect(page.locator("#pod")).to_have_text(page_pod.pod_name)
            assert (
                httpx.post(api, json={"user": "shopper", "data": "order paid"}).status_code == 202
            )
            expect(page.locator("#log")).to_contain_text("order paid", timeout=10_000)

            page_pod.kill()  # the pod dies under the page
            expect(page.locator("#state")).not_to_have_text("open", timeout=10_000)
            # Published while the page has no socket: it must not be lost.
            assert (
                httpx.post(api, json={"user": "shopper", "data": "order shipped"}).status_code
                == 202
            )

            # The pod comes back at the same address (a new pod behind the same Service).
            reborn = GatewayProcess(
                f"web-reborn-{uuid.uuid4().hex[:6]}",
                host=page_pod.host,
                port=page_pod.port,
                amqp_url=vhost.amqp_url,
                args=["--auth", "none"],
                log_dir=tmp_path,
            ).start()
            try:
                reborn.wait_ready()
                expect(page.locator("#state")).to_have_text("open", timeout=30_000)
                expect(page.locator("#pod")).to_have_text(reborn.pod_name)
                expect(page.locator("#log")).to_contain_text("order shipped", timeout=10_000)
                log_text = page.locator("#log").inner_text()
                assert log_text.count("order paid") == 1  # recovered, not replayed twice
            finally:
                reborn.kill()
        finally:
            browser.close()
