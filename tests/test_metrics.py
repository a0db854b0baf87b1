"""The metrics an operator alerts on are there, by the names docs/metrics.md gives."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from .support import InProcessPod, wait_for
from .wsclient import Client

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def pod() -> Iterator[InProcessPod]:
    with InProcessPod(auth="none", api_keys=["k"], max_body_bytes=1000) as p:
        yield p


def test_publish_requests_by_status_and_confirm_time(pod: InProcessPod) -> None:
    url, ok = f"{pod.http_url}/api/publish", {"Authorization": "Bearer k"}
    calls = [
        ({"broadcast": True, "data": 1}, ok, 202),
        ({"broadcast": True, "data": 2}, ok, 202),
        ({"broadcast": "yes", "data": 1}, ok, 400),
        ({"broadcast": True, "data": 1}, {"Authorization": "Bearer nope"}, 401),
        ({"broadcast": True, "data": "x" * 2000}, ok, 413),
    ]
    for body, headers, status in calls:
        assert httpx.post(url, json=body, headers=headers, timeout=5).status_code == status
    counts = {
        s: pod.metric("clarion_publish_requests_total", {"status": str(s)})
        for s in (202, 400, 401, 413, 503)
    }
    assert counts == {202: 2, 400: 1, 401: 1, 413: 1, 503: 0}
    assert pod.metric("clarion_publish_confirm_seconds_count") == 2


def test_process_metrics(pod: InProcessPod) -> None:
    assert pod.metric("process_cpu_seconds_total") > 0
    assert pod.metric("process_resident_memory_bytes") > 0
    assert pod.metric("process_open_fds") > 0


async def test_refused_frames_count_as_limit_hits_not_as_dropped_messages() -> None:
    with InProcessPod(auth="none", max_frames_per_second=2) as pod:
        c = await Client.connect(f"{pod.ws_url}?user=f")
        await c.wait_welcome()
        for _ in range(20):
            await c.send({"type": "ping"})
        await wait_for(
            lambda: pod.metric("clarion_limit_hits_total", {"limit": "frame_rate"}) > 0,
            5,
            message="frame_rate limit hits",
        )
        text = httpx.get(f"{pod.http_url}/metrics", timeout=5).text
        assert 'reason="rate_limited"' not in text
        await c.close()


async def test_replays_are_counted_by_result(pod: InProcessPod) -> None:
    r = httpx.post(
        f"{pod.http_url}/api/publish",
        json={"broadcast": True, "data": 0},
        headers={"Authorization": "Bearer k"},
        timeout=5,
    )
    since = r.json()["id"]
    # The second names no message (and the history has dropped nothing): unknown.
    for q in (f"since={since}", "since=01a00000-0000-7000-8000-000000000001"):
        c = await Client.connect(f"{pod.ws_url}?user=r&{q}")
        await c.wait_welcome()
        await c.close()
    labels = {"scope": "connect"}
    assert pod.metric("clarion_replays_total", {**labels, "result": "recovered"}) == 1
    assert pod.metric("clarion_replays_total", {**labels, "result": "unknown"}) == 1
