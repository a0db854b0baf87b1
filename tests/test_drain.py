"""A drain paces its closes by its socket count, and never waits for a socket it closed.

The reconnects of a drain land on the other pods: a pod closes at most
``--drain-rate`` sockets a second (its window stretches to sockets / rate),
so a full pod is never dumped on its neighbours faster than they admit. And
a socket still waiting for its replay (history that cannot be read yet)
when the drain reaches it is let go at once: a drain used to outlive
uvicorn's graceful shutdown behind such sockets ("timeout graceful shutdown
exceeded", issue 19).
"""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from clarion.config import drain_seconds
from clarion.message import new_message_id
from testkit.net import TcpProxy

from .support import PodFactory, Vhost, wait_for
from .wsclient import Client

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(
    ("sockets", "window", "rate", "seconds"),
    [
        (0, 10.0, 500.0, 10.0),  # the window at least
        (10_000, 10.0, 500.0, 20.0),  # a full pod: 20 s at 500 a second
        (20_000, 0.0, 500.0, 40.0),
        (10_000, 10.0, 0.0, 10.0),  # no rate: the window alone
        (1, 0.0, 0.0, 0.0),
    ],
)
def test_drain_seconds(sockets: int, window: float, rate: float, seconds: float) -> None:
    assert drain_seconds(sockets, window, rate) == seconds


async def test_a_drain_closes_no_faster_than_its_rate(pod_factory: PodFactory) -> None:
    n, rate = 40, 20.0
    args = ["--auth", "none", "--drain-delay", "0", "--drain-window", "0"]
    (pod,) = pod_factory(1, "pace", args=args, env={"CLARION_DRAIN_RATE": str(rate)})
    clients = [
        await Client.connect(f"{pod.ws_url}?user=p{i}", ping_interval=None) for i in range(n)
    ]
    for c in clients:
        await c.wait_welcome()
    t0 = time.monotonic()
    pod.signal(signal.SIGTERM)
    await wait_for(lambda: all(c.closed for c in clients), 10, message="every socket closed")
    assert {c.close_code for c in clients} == {1001}
    closes = sorted(c.closed_at - t0 for c in clients if c.closed_at is not None)
    # n sockets at `rate` a second: about n / rate seconds from the first to the last.
    assert closes[-1] - closes[0] >= 0.75 * n / rate, closes
    assert pod.proc is not None
    assert await asyncio.to_thread(pod.proc.wait, 10) == 0


async def test_a_socket_waiting_for_its_replay_does_not_hold_the_drain(
    vhost: Vhost, pod_factory: PodFactory
) -> None:
    proxy = await TcpProxy([5672]).start()
    url = vhost.amqp_url.replace("127.0.0.1:5672", f"127.0.0.1:{proxy.port}")
    (pod,) = pod_factory(
        1,
        "held",
        amqp_url=url,
        routing="fanout",  # no binding to wait for: the session waits for its replay
        args=["--auth", "none", "--drain-delay", "0", "--drain-window", "0"],
        start=False,
    )
    try:
        # In a thread: the proxy to the broker runs on this test's event loop.
        await asyncio.to_thread(pod_factory.start, [pod], 20)
        proxy.to_server.clear()  # the broker hears nothing: the history cannot be read
        since = new_message_id()
        client = await Client.connect(f"{pod.ws_url}?user=held&since={since}", ping_interval=None)
        await asyncio.sleep(0.3)  # the session is waiting for its replay (no welcome)
        assert not client.of_type("welcome") and not client.closed
        t0 = time.monotonic()
        pod.signal(signal.SIGTERM)
        await wait_for(lambda: client.closed, 5, message="the waiting socket closed")
        assert client.close_code == 1001
        assert pod.proc is not None
        assert await asyncio.to_thread(pod.proc.wait, 10) == 0
        took = time.monotonic() - t0
        log = pod.log_path.read_text()
        assert "graceful shutdown exceeded" not in log, log[-2000:]
        # Neither the drain's wait for its sockets to go (2 s) nor uvicorn's graceful
        # shutdown (3 s) is spent on a socket already closed.
        assert took < 4.0, f"exited {took:.2f}s after SIGTERM"
    finally:
        proxy.to_server.set()
        pod.kill()
        await proxy.close()
