"""Table tests of the autoscaler's pure decision function."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from clarion_operator.scaling import Policy, State, current_replicas, decide, recommend
from clarion_operator.spec import GatewaySpec

P = Policy(min_replicas=2, max_replicas=10, target_per_pod=100, up_window=0, down_window=60)


@pytest.mark.parametrize(
    ("total", "policy", "expected"),
    [
        (0, P, 2),  # clamped at min
        (150, P, 2),
        (201, P, 3),  # ceil
        (300, P, 3),
        (301, P, 4),
        (5_000, P, 10),  # clamped at max
        (0, Policy(1, 5, 100), 1),
        (-5, P, 2),  # nonsense input never goes below min
    ],
)
def test_recommend(total: int, policy: Policy, expected: int) -> None:
    assert recommend(total, policy) == expected


def run(
    current: int,
    ticks: Sequence[tuple[float, Sequence[int | None]]],
    policy: Policy = P,
    since: float = -1000.0,
) -> list[int]:
    """Feed ticks (time, per-pod connections) and apply each decision; the replica trail."""
    state = State(since=since)
    trail = []
    for now, conns in ticks:
        d = decide(current, conns, now, state, policy)
        state = d.state
        current = d.replicas
        trail.append(current)
    return trail


def test_scale_up_is_immediate_with_no_up_window() -> None:
    assert run(2, [(0, [300, 300])]) == [6]


def test_scale_up_waits_out_the_up_window() -> None:
    policy = Policy(2, 10, 100, up_window=10, down_window=60)
    # The up-window takes the lowest desire seen in it: a brief spike does not scale.
    assert run(
        2, [(0, [100, 100]), (5, [300, 300]), (10, [300, 300]), (16, [300, 300])], policy
    ) == [
        2,
        2,
        2,
        6,
    ]


def test_scale_down_only_after_the_window_and_by_the_step() -> None:
    trail = run(6, [(0, [300, 300]), (10, [0, 0]), (69, [0, 0]), (71, [0, 0]), (72, [0, 0])])
    # Desire 2 from t=10; the 6 seen at t=0 holds until t=60 falls out of the window.
    assert trail == [6, 6, 6, 5, 4]


def test_scale_down_step_limit() -> None:
    policy = Policy(1, 10, 100, down_window=0, max_down_step=3)
    assert run(10, [(0, [0]), (1, [0]), (2, [0]), (3, [0])], policy) == [7, 4, 1, 1]


def test_flapping_input_never_scales_down() -> None:
    ticks = [(t, [300, 300] if t % 20 == 0 else [50, 50]) for t in range(0, 200, 10)]
    assert set(run(6, ticks)) == {6}


def test_fresh_operator_waits_a_whole_window_before_scaling_down() -> None:
    # A restarted operator has seen nothing: it must not shrink on its first look.
    assert run(6, [(100, [0, 0]), (150, [0, 0]), (161, [0, 0])], since=100) == [6, 6, 5]


@pytest.mark.parametrize(
    ("current", "conns", "expected"),
    [
        (6, [0, None], 6),  # unknown: never scale down
        (6, [], 6),  # no serving pod at all: unknown
        (2, [400, None], 4),  # what is known already needs more: scaling up is safe
        (12, [None], 10),  # above max is corrected even without metrics
        (1, [None], 2),  # below min too
    ],
)
def test_unknown_metrics(current: int, conns: list[int | None], expected: int) -> None:
    d = decide(current, conns, 0.0, State(since=-1000.0), Policy(2, 10, 100, down_window=0))
    assert d.replicas == expected
    assert d.recommendation is None


def test_unknown_ticks_are_not_remembered() -> None:
    policy = Policy(2, 10, 100, down_window=30)
    state = State(since=-1000.0)
    d = decide(6, [0, None], 0.0, state, policy)
    assert d.state.history == ()


def test_clamp_when_bounds_change() -> None:
    assert run(12, [(0, [500, 500])]) == [10]
    assert run(1, [(0, [0])]) == [2]


def test_direction() -> None:
    d = decide(2, [300, 300], 0.0, State(since=0.0), P)
    assert d.direction(2) == "up"
    assert d.direction(6) is None


def test_no_window_means_no_memory() -> None:
    policy = Policy(1, 10, 100, up_window=0, down_window=0, max_down_step=10)
    assert run(1, [(0, [0]), (1, [500]), (2, [0])], policy) == [1, 5, 1]


def test_policy_from_spec() -> None:
    gs = GatewaySpec.parse(
        {
            "image": "i",
            "replicas": {"min": 3, "max": 7},
            "scaling": {
                "targetConnectionsPerPod": 10,
                "scaleUpStabilizationSeconds": 5,
                "scaleDownStabilizationSeconds": 50,
                "maxScaleDownStep": 2,
            },
        }
    )
    assert Policy.from_spec(gs) == Policy(3, 7, 10, up_window=5, down_window=50, max_down_step=2)
    d = GatewaySpec.parse({"image": "i"})
    assert Policy.from_spec(d) == Policy(
        d.min_replicas,
        d.max_replicas,
        d.scaling.target_connections_per_pod,
        d.scaling.scale_up_stabilization_seconds,
        d.scaling.scale_down_stabilization_seconds,
        d.scaling.max_scale_down_step,
    )


@pytest.mark.parametrize(
    ("deployment", "replicas"),
    [({"spec": {"replicas": 3}}, 3), ({"spec": {"replicas": 0}}, 0), ({"spec": {}}, 1), ({}, 1)],
)
def test_current_replicas_defaults_like_the_api_server(
    deployment: dict[str, Any], replicas: int
) -> None:
    assert current_replicas(deployment) == replicas
