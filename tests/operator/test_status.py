"""Table tests of the status builders: what a handler writes, and that a re-run writes nothing."""

from __future__ import annotations

from typing import Any

from clarion_operator.scaling import Decision, State
from clarion_operator.status import (
    DEPLOYED,
    SCALING_ACTIVE,
    applied,
    changed,
    orphans_counted,
    scaled,
    set_condition,
)

T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z"
STATE = State(since=0.0)
KNOWN = Decision(3, 3, "6 connections want 3", STATE)
UNKNOWN = Decision(2, None, "metrics unknown: holding", STATE)
DEPLOYMENT = {"spec": {"replicas": 2}, "status": {"readyReplicas": 2}}


def merged(status: dict[str, Any], delta: dict[str, Any]) -> dict[str, Any]:
    return {**status, **delta}


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == type_)


def test_scaled_writes_the_autoscaler_fields_then_nothing() -> None:
    delta = scaled({}, KNOWN, 6, DEPLOYMENT, serving=2, scaled_at=T0, now=T0)
    assert {k: v for k, v in delta.items() if k != "conditions"} == {
        "connections": 6,
        "desiredReplicas": 3,
        "replicas": 3,
        "readyReplicas": 2,
        "lastScaleTime": T0,
    }
    assert condition(delta, SCALING_ACTIVE) == {
        "type": SCALING_ACTIVE,
        "status": "True",
        "reason": "MetricsRead",
        "message": "6 connections want 3",
        "lastTransitionTime": T0,
    }
    # The next tick sees the same: nothing to write (and lastScaleTime stays).
    assert scaled(merged({}, delta), KNOWN, 6, DEPLOYMENT, serving=2, now=T1) == {}


def test_scaled_unknown_metrics() -> None:
    before = scaled({}, KNOWN, 6, DEPLOYMENT, serving=2, now=T0)
    delta = scaled(before, UNKNOWN, 4, DEPLOYMENT, serving=2, now=T1)
    assert delta["desiredReplicas"] == 2  # no recommendation: the replicas held
    assert delta["connections"] == 4 and "lastScaleTime" not in delta
    cond = condition(delta, SCALING_ACTIVE)
    assert (cond["status"], cond["reason"], cond["lastTransitionTime"]) == (
        "False",
        "MetricsUnknown",
        T1,
    )


def test_ready_replicas_from_the_deployment_else_the_serving_pods() -> None:
    young = {"spec": {"replicas": 2}, "status": {}}
    assert scaled({}, KNOWN, 0, young, serving=1, now=T0)["readyReplicas"] == 1
    assert scaled({}, KNOWN, 0, DEPLOYMENT, serving=1, now=T0)["readyReplicas"] == 2


def test_applied_sets_deployed_once_and_keeps_other_conditions() -> None:
    other = set_condition([], SCALING_ACTIVE, True, "MetricsRead", "steady", now=T0)
    delta = applied({"conditions": other})
    assert [c["type"] for c in delta["conditions"]] == [SCALING_ACTIVE, DEPLOYED]
    assert condition(delta, SCALING_ACTIVE) == other[0]
    assert applied(delta) == {}
    assert applied(None)["conditions"][0]["type"] == DEPLOYED


def test_transition_time_kept_while_the_status_stays() -> None:
    first = set_condition([], DEPLOYED, True, "Applied", "m", now=T0)
    again = set_condition(first, DEPLOYED, True, "Applied", "other message", now=T1)
    flipped = set_condition(first, DEPLOYED, False, "Failed", "m", now=T1)
    assert again[0]["lastTransitionTime"] == T0 and again[0]["message"] == "other message"
    assert flipped[0]["lastTransitionTime"] == T1


def test_orphans_counted_adds() -> None:
    assert orphans_counted({}, 2) == {"orphanQueuesDeleted": 2}
    assert orphans_counted(None, 1) == {"orphanQueuesDeleted": 1}
    assert orphans_counted({"orphanQueuesDeleted": 5, "replicas": 2}, 1) == {
        "orphanQueuesDeleted": 6
    }
    assert orphans_counted({"orphanQueuesDeleted": 5}, 0) == {}


def test_changed_keeps_only_differences() -> None:
    assert changed({"a": 1, "b": 2}, {"a": 1, "b": 3, "c": 4}) == {"b": 3, "c": 4}
    assert changed(None, {}) == {}
