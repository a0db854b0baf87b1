"""The gateway image, run as the operator's Deployment runs it, against the test RabbitMQ."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter

import httpx
import jwt
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import free_port, wait_for
from tests.wsclient import Client

from .conftest import Gateway, Images
from .podman import Containers, PodRun, translate

pytestmark = [pytest.mark.images, pytest.mark.timeout(60, func_only=True)]


def url(run: PodRun, path: str) -> str:
    """``/api``, ``/admin`` and ``/metrics`` are on the internal port when there is one."""
    internal = path.startswith(("/api/", "/admin/", "/metrics"))
    port = run.api_port if internal and run.api_port else run.port
    return f"http://127.0.0.1:{port}{path}"


async def start(
    containers: Containers,
    images: Images,
    gateway: Gateway,
    overrides: dict[str, str] | None = None,
) -> PodRun:
    """One gateway container, as a pod of the Deployment; returns once /readyz is 200."""
    run = translate(
        gateway.deployment,
        pod_name=f"gw-{uuid.uuid4().hex[:8]}",
        port=free_port(),
        api_port=free_port(),
        secrets=gateway.secrets,
        env_overrides=overrides,
        image_user=images.user(images.gateway),
    )
    containers.run(run)

    async def settled() -> str | None:
        if not (await asyncio.to_thread(containers.state, run.name))["Running"]:
            return "exited"
        async with httpx.AsyncClient(timeout=2) as http:
            ok = (await http.get(url(run, run.ready_path))).status_code == 200
        return "ready" if ok else None

    how = await wait_for(settled, 30, 0.2, message=f"{run.name} ready")
    assert how == "ready", f"{run.name} exited: {containers.logs(run.name)}"
    return run


def token(gateway: Gateway, user: str) -> str:
    claims = {"sub": user, "exp": int(time.time()) + 300}
    return jwt.encode(claims, gateway.jwt_secret, algorithm="HS256")


async def connect(run: PodRun, gateway: Gateway, user: str) -> Client:
    ws = await Client.connect(
        f"ws://127.0.0.1:{run.port}/ws?token={token(gateway, user)}", user, ping_interval=None
    )
    await ws.wait_welcome()
    return ws


async def metric(run: PodRun, name: str) -> float:
    async with httpx.AsyncClient(timeout=5) as http:
        text = (await http.get(url(run, "/metrics"))).text
    return sum(
        s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == name
    )


async def test_two_containers_deliver_across_the_broker(
    containers: Containers, images: Images, gateway: Gateway
) -> None:
    """A socket on container 1 gets what a backend publishes through container 2."""
    one, two = await asyncio.gather(*(start(containers, images, gateway) for _ in range(2)))
    alice = await connect(one, gateway, "alice")
    assert alice.welcome["pod"] == one.name  # the fieldRef pod name reached the process
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            unauthorized = await http.post(
                url(two, "/api/publish"), json={"user": "alice", "data": "no key"}
            )
            assert unauthorized.status_code == 401
            r = await http.post(
                url(two, "/api/publish"),
                json={"user": "alice", "data": {"order": 42}},
                headers={"Authorization": f"Bearer {gateway.api_key}"},
            )
            assert r.status_code == 202, r.text
            await alice.wait_data({"order": 42})
            assert alice.data() == [{"order": 42}]

            for run in (one, two):
                assert (await http.get(url(run, run.live_path))).status_code == 200
                assert (await http.get(url(run, run.ready_path))).status_code == 200
        assert await wait_for(lambda: metric(one, "clarion_connections"), 5) == 1
        assert await metric(two, "clarion_connections") == 0
    finally:
        await alice.close()


async def test_sigterm_to_pid_1_drains_and_exits_cleanly(
    containers: Containers, images: Images, gateway: Gateway
) -> None:
    """The kubelet's stop: preStop, SIGTERM, 1001 closes spread over the window, exit 0."""
    # The operator writes the gateway's default drain (5 s delay, 10 s window); shorter
    # values keep the test short and show the same thing. Everything else is as written.
    delay, window = 1.0, 3.0
    run = await start(
        containers,
        images,
        gateway,
        {"CLARION_DRAIN_DELAY": str(delay), "CLARION_DRAIN_WINDOW": str(window)},
    )
    n = 12
    sockets = await asyncio.gather(*(connect(run, gateway, f"d{i}") for i in range(n)))
    try:
        await wait_for(lambda: metric(run, "clarion_connections"), 5)
        assert run.pre_stop, "the Deployment has a preStop hook (endpoints drop the pod first)"
        stopping = asyncio.create_task(asyncio.to_thread(containers.stop, run))
        readiness: list[tuple[float, int]] = []  # (when asked, status) until the exit
        async with httpx.AsyncClient(timeout=1) as http:
            while not stopping.done():
                asked = time.monotonic()
                with contextlib.suppress(httpx.HTTPError):
                    status = (await http.get(url(run, run.ready_path))).status_code
                    readiness.append((asked, status))
                await asyncio.sleep(0.05)  # the sampling period, not a wait for something
        stopped = await stopping
        sigterm, exited, code = stopped.sigterm_at, stopped.exited_after, stopped.exit_code
        # Ready through preStop; unready at SIGTERM, before the first socket closes.
        assert all(status == 200 for t, status in readiness if t < sigterm - 0.1), readiness
        unready = next(t for t, status in readiness if status != 200) - sigterm
        assert unready < 0.5, f"/readyz still 200 {unready:.2f}s after SIGTERM"
        # Nothing closed while the preStop hook ran: the pod still served its sockets.
        closes = sorted(s.closed_at - sigterm for s in sockets if s.closed_at is not None)
        assert len(closes) == n, f"{n - len(closes)} sockets still open after the exit"
        assert closes[0] > 0, "a socket closed during preStop, before SIGTERM"
        assert Counter(s.close_code for s in sockets) == {1001: n}
        assert closes[0] >= delay * 0.9, f"first close {closes[0]:.2f}s after SIGTERM"
        spread = closes[-1] - closes[0]
        assert spread >= window * 0.6, f"closes not spread over the {window} s window: {spread}"
        busiest = max(Counter(int(c / 0.25) for c in closes).values())
        assert busiest <= n // 2, f"{busiest} of {n} sockets closed in one 250 ms slice"
        # Exit 0 (not 137) means no SIGKILL: the drain fit in what preStop left of the grace.
        assert code == 0, containers.logs(run.name)
        assert exited < stopped.grace_left
        print(
            f"\ndrain in the container: unready {unready:.2f}s, closes"
            f" {closes[0]:.2f}-{closes[-1]:.2f}s after SIGTERM,"
            f" exit {code} after {exited:.2f}s (grace {run.grace_seconds:.0f}s incl. preStop)"
        )
    finally:
        for s in sockets:
            await s.close()
