"""`clarion dev`: two pods in one process on the embedded broker, no RabbitMQ.

Also the demo page, driven in a real headless Chromium (Debian's `chromium`,
via Playwright with the system executable): two windows on two pods, type in
one, read it in the other.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .support import CHROMIUM, CHROMIUM_ARGS, free_port, wait_for_sync
from .wsclient import Client

pytestmark = pytest.mark.timeout(90)


class DevServer:
    def __init__(self, port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.port = port
        self.proc = proc
        self.log = log

    def url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.port + i}"


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    while True:
        port = free_port()
        try:
            import socket

            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 1))
            break
        except OSError:
            continue
    log = Path(tmp_path_factory.mktemp("dev")) / "dev.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLARION_")}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "clarion", "dev", "--pods", "2", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    server = DevServer(port, proc, log)

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError("clarion dev exited: " + log.read_text())
        return all(
            httpx.get(f"{server.url(i)}/readyz", timeout=1).status_code == 200 for i in (0, 1)
        )

    try:
        wait_for_sync(ready, 20, 0.1, "clarion dev ready")
        yield server
    finally:
        proc.terminate()
        proc.wait(10)


def test_dev_prints_where_the_pods_are(dev: DevServer) -> None:
    out = dev.log.read_text()
    assert "embedded in-memory broker" in out
    assert f"http://127.0.0.1:{dev.port}/" in out and f"http://127.0.0.1:{dev.port + 1}/" in out


async def test_embedded_broker_delivers_across_the_two_ports(dev: DevServer) -> None:
    a = await Client.connect(f"ws://127.0.0.1:{dev.port}/ws?user=alice", "alice")
    b = await Client.connect(f"ws://127.0.0.1:{dev.port + 1}/ws?user=bob", "bob")
    try:
        assert (await a.wait_welcome())["pod"] != (await b.wait_welcome())["pod"]
        await a.send("hello bob")  # bare text: broadcast, client publishing is on in dev
        await b.wait_data({"from": "alice", "text": "hello bob"})
        r = httpx.post(f"{dev.url(1)}/api/publish", json={"user": "alice", "data": "for alice"})
        assert r.status_code == 202
        await a.wait_data("for alice")
    finally:
        await a.close()
        await b.close()


async def test_embedded_broker_recovers_missed_messages(dev: DevServer) -> None:
    user = f"r-{uuid.uuid4().hex[:6]}"
    a = await Client.connect(f"ws://127.0.0.1:{dev.port}/ws?user={user}", "a")
    await a.wait_welcome()
    first = httpx.post(f"{dev.url(0)}/api/publish", json={"user": user, "data": 1}).json()["id"]
    await a.wait_data(1)
    await a.close()
    for i in (2, 3):
        httpx.post(f"{dev.url(0)}/api/publish", json={"user": user, "data": i})
    b = await Client.connect(f"ws://127.0.0.1:{dev.port + 1}/ws?user={user}&since={first}", "b")
    try:
        welcome = await b.wait_welcome()
        assert welcome["recovered"] is True and welcome["missed"] == 2
        await b.wait_data(3)
        assert b.data() == [2, 3]
    finally:
        await b.close()


@pytest.mark.browser
def test_demo_page_two_windows_on_two_pods(dev: DevServer) -> None:
    from playwright.sync_api import expect, sync_playwright

    assert Path(CHROMIUM).exists() or shutil.which(CHROMIUM), (
        f"{CHROMIUM} missing: scripts/services.sh installs Debian's chromium"
    )

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
        )
        try:
            left = browser.new_page()
            right = browser.new_page()
            left.goto(f"{dev.url(0)}/?user=left")
            right.goto(f"{dev.url(1)}/?user=right")
            for page, pod in ((left, "dev-0"), (right, "dev-1")):
                expect(page.locator("#state")).to_have_text("connected", timeout=10_000)
                expect(page.locator("#pod")).to_have_text(pod)
            text = f"typed in the left window {uuid.uuid4().hex[:6]}"
            left.fill("#text", text)
            left.press("#text", "Enter")
            expect(right.locator("#log")).to_contain_text(text, timeout=10_000)
            expect(left.locator("#log")).to_contain_text(text, timeout=10_000)
        finally:
            browser.close()
