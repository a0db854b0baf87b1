"""Table tests of orphan-queue selection: pods starting, running, terminating and gone."""

from __future__ import annotations

import pytest

from clarion import names
from clarion_operator.cleanup import QueueInfo, queue_of_deleted_pod, sweep
from clarion_operator.pods import parse_pod


def pod(name: str, phase: str, ready: bool, terminating: bool = False) -> dict[str, object]:
    meta: dict[str, object] = {
        "name": name,
        "namespace": "ns",
        "labels": names.gateway_labels("gw"),
    }
    if terminating:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {
        "metadata": meta,
        "spec": {"containers": [{"ports": [{"name": "http", "containerPort": 8080}]}]},
        "status": {
            "phase": phase,
            "podIP": "10.0.0.1" if phase != "Pending" else None,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


PODS = [
    parse_pod(pod("starting", "Pending", False)),
    parse_pod(pod("running", "Running", True)),
    parse_pod(pod("terminating", "Running", False, terminating=True)),
]
LIVE = {p.name for p in PODS}


def q(pod_name: str, consumers: int = 0) -> QueueInfo:
    return QueueInfo(names.queue_name(pod_name), consumers)


def test_pod_states() -> None:
    starting, running, terminating = PODS
    assert not starting.serving and running.serving and not terminating.serving
    assert terminating.terminating and running.port == 8080


@pytest.mark.parametrize(
    ("queue", "first_seen", "deleted"),
    [
        (q("starting"), 0.0, False),  # a starting pod owns its queue
        (q("running"), 0.0, False),
        (q("terminating"), 0.0, False),  # draining: still reads its queue
        (q("gone"), 0.0, True),  # gone and seen for longer than the grace
        (q("gone"), 95.0, False),  # gone, but first seen 5 s ago: grace
        (q("gone"), None, False),  # first sight starts the grace
        (q("gone", consumers=1), 0.0, False),  # someone still consumes it
        (QueueInfo("clarion.history"), 0.0, False),  # not a pod queue
        (QueueInfo("other-app.queue"), 0.0, False),
        (QueueInfo(names.QUEUE_PREFIX), 0.0, False),  # the bare prefix names no pod
    ],
)
def test_orphan_selection(queue: QueueInfo, first_seen: float | None, deleted: bool) -> None:
    seen = {} if first_seen is None else {queue.name: first_seen}
    result = sweep([queue], LIVE, seen, now=100.0, grace=10.0)
    assert (queue.name in result.delete) is deleted


def test_grace_starts_at_first_sight_and_is_forgotten_when_the_pod_returns() -> None:
    r1 = sweep([q("gone")], LIVE, {}, now=0.0, grace=10.0)
    assert r1.delete == () and r1.first_seen == {names.queue_name("gone"): 0.0}
    r2 = sweep([q("gone")], LIVE, r1.first_seen, now=10.0, grace=10.0)
    assert r2.delete == (names.queue_name("gone"),)
    r3 = sweep([q("gone")], LIVE | {"gone"}, r1.first_seen, now=10.0, grace=10.0)
    assert r3.delete == () and r3.first_seen == {}


def test_custom_prefix() -> None:
    queues = [QueueInfo("x.gone"), QueueInfo(names.queue_name("gone"))]
    assert sweep(queues, set(), {}, 0.0, 0.0, prefix="x.").delete == ("x.gone",)
    assert queue_of_deleted_pod("p", "x.") == "x.p"
