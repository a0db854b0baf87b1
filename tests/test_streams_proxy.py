"""Through a proxy that blocks WebSocket, as corporate proxies do, the HTTP streams work.

Debian's nginx in front of two real pods (round robin, no stickiness), refusing
every ``Upgrade`` with 403; a second configuration buffers responses
(``proxy_buffering on``) unless the upstream says ``X-Accel-Buffering: no``.
A stream opened through it receives at once, and its posted frames land on
either pod.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from testkit.net import free_port

from .sseclient import Stream
from .support import (
    GatewayProcess,
    PodFactory,
    Vhost,
    loopbacks,
    wait_for_sync,
)
from .test_browser import browser  # noqa: F401 (the module's Chromium, shared)

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx not installed"),
]

CONFIG = """
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log;
events {{ worker_connections 256; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  upstream pods {{ {servers} }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      if ($http_upgrade != "") {{ return 403; }}
      proxy_pass http://pods;
      proxy_http_version 1.1;
      proxy_buffering {buffering};
      proxy_read_timeout 60s;
    }}
  }}
}}
"""


class Nginx:
    def __init__(self, tmp: Path, pods: list[GatewayProcess], buffering: bool) -> None:
        self.tmp = tmp
        self.port = free_port("127.0.0.1")
        servers = " ".join(f"server {p.host}:{p.port};" for p in pods)
        self.conf = tmp / "nginx.conf"
        self.conf.write_text(
            CONFIG.format(
                tmp=tmp, servers=servers, port=self.port, buffering="on" if buffering else "off"
            )
        )
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Nginx:
        subprocess.run(["nginx", "-c", str(self.conf), "-p", str(self.tmp)], check=True)
        wait_for_sync(self._up, 10, message="nginx up")
        return self

    def _up(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def __exit__(self, *exc: object) -> None:
        pid = int((self.tmp / "nginx.pid").read_text())
        os.kill(pid, signal.SIGQUIT)


@pytest.fixture(scope="module")
def pods(module_vhost: Vhost, module_pod_factory: PodFactory) -> list[GatewayProcess]:
    args = ["--auth", "none", "--api-key", "k"]
    url = module_vhost.amqp_url
    return module_pod_factory(2, "proxied", amqp_url=url, args=args, hosts=loopbacks(70, 2))


@pytest.fixture(params=[False, True], ids=["unbuffered", "buffering"])
def proxy(
    request: pytest.FixtureRequest, pods: list[GatewayProcess], tmp_path: Path
) -> Iterator[Nginx]:
    with Nginx(tmp_path, pods, buffering=request.param) as n:
        yield n


async def test_websocket_is_refused_and_the_stream_works_through_the_proxy(
    proxy: Nginx, pods: list[GatewayProcess]
) -> None:
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(f"ws://127.0.0.1:{proxy.port}/ws?user=p", open_timeout=5)
    assert refused.value.response.status_code == 403
    user, channel = f"p-{uuid.uuid4().hex[:6]}", f"c-{uuid.uuid4().hex[:6]}"
    s = await Stream.open(f"{proxy.url}/sse?user={user}")
    try:
        session = (await s.wait_welcome())["session"]
        async with httpx.AsyncClient(timeout=10) as http:
            # Round robin: the posts land on both pods, the frames on the stream's.
            for _ in range(4):
                r = await http.post(
                    f"{proxy.url}/emulation",
                    json={
                        "session": session,
                        "frames": [{"type": "subscribe", "channel": channel}],
                    },
                )
                assert r.status_code == 202, r.text
            await s.wait_type("subscribed", 4)
            for i, target in enumerate(({"user": user}, {"channel": channel})):
                r = await http.post(
                    f"{proxy.url}/api/publish",
                    json={**target, "data": i},
                    headers={"Authorization": "Bearer k"},
                )
                assert r.status_code == 202
            # Delivered through the proxy as it happens, buffering on or off.
            await s.until(lambda: s.data() == [0, 1], 5, "both messages")
    finally:
        await s.close()


@pytest.mark.timeout(90)
def test_a_plain_eventsource_recovers_across_a_pod_kill_through_the_proxy(
    browser: Any,  # noqa: F811 (the fixture imported above)
    module_vhost: Vhost,
    pod_factory: PodFactory,
    tmp_path: Path,
) -> None:
    """No Clarion client: the browser's own EventSource, its own reconnect, Last-Event-ID."""
    args = ["--auth", "none", "--api-key", "k"]
    user = f"es-{uuid.uuid4().hex[:6]}"
    url = module_vhost.amqp_url
    with pod_factory(2, "es", amqp_url=url, args=args, hosts=loopbacks(80, 2)) as pods:
        with Nginx(tmp_path, pods, buffering=True) as proxy:
            page = browser.new_page()
            page.goto(f"{proxy.url}/healthz")  # same origin as the stream
            page.evaluate(
                """(url) => {
                  window.got = []; window.pods = [];
                  const es = new EventSource(url);
                  es.onmessage = (e) => {
                    const f = JSON.parse(e.data);
                    if (f.type === "message") window.got.push(f.data);
                    if (f.type === "welcome") window.pods.push(f.pod);
                  };
                }""",
                f"/sse?user={user}",
            )
            page.wait_for_function("window.pods.length === 1", timeout=10_000)
            holder = next(p for p in pods if p.pod_name == page.evaluate("window.pods[0]"))
            other = next(p for p in pods if p is not holder)

            def send(i: int) -> None:
                r = httpx.post(
                    f"{other.http_url}/api/publish",
                    json={"user": user, "data": i},
                    headers={"Authorization": "Bearer k"},
                    timeout=10,
                )
                assert r.status_code == 202

            send(0)
            page.wait_for_function("window.got.length === 1", timeout=10_000)
            holder.kill()
            for i in range(1, 6):  # published while the browser has no stream
                send(i)
            page.wait_for_function("window.pods.length === 2", timeout=20_000)
            send(6)
            page.wait_for_function("window.got.length >= 7", timeout=10_000)
            assert page.evaluate("window.got") == list(range(7))  # each once, in order
            assert page.evaluate("window.pods[1]") == other.pod_name
            page.close()
