"""Table tests of the shed plan and when one is made."""

from __future__ import annotations

import pytest

from clarion_operator.rebalance import due, plan, settled, shed_plan


@pytest.mark.parametrize(
    ("conns", "plan"),
    [
        ({"a": 6, "b": 0}, {"a": 3}),  # after a scale-out: the new pod is empty
        ({"a": 100, "b": 100, "c": 0}, {"a": 33, "b": 33}),
        ({"a": 11, "b": 9}, {}),  # within tolerance
        ({"a": 1, "b": 0}, {}),  # mean below one socket: nothing to gain
        ({"a": 50}, {}),  # one pod: nowhere to go
        ({}, {}),
    ],
)
def test_shed_plan(conns: dict[str, int], plan: dict[str, int]) -> None:
    assert shed_plan(conns) == plan


def test_rate_limit() -> None:
    assert due(0.0, None, 15)
    assert not due(59.0, 0.0, 15)
    assert due(60.0, 0.0, 15)


def test_settled_means_one_serving_pod_per_replica() -> None:
    assert settled(3, 3)
    assert not settled(2, 3)  # one still starting: it is about to fill
    assert not settled(4, 3)  # one too many: it is about to go


UNEVEN = {"a": 6, "b": 0}


@pytest.mark.parametrize(
    ("readings", "replicas", "last", "expected"),
    [
        (UNEVEN, 2, None, {"a": 3}),
        (UNEVEN, 2, 0.0, {"a": 3}),  # the cooldown (4 x 15 s) is over at t=100
        (UNEVEN, 2, 50.0, {}),  # cooling down
        (UNEVEN, 3, None, {}),  # not settled: a third pod is starting
        ({"a": 6, "b": None}, 2, None, {}),  # a pod unread: no judgement on partial data
        ({}, 0, None, {}),
        ({"a": 3, "b": 3}, 2, None, {}),  # balanced
    ],
)
def test_plan_only_on_known_settled_cooled_down_pods(
    readings: dict[str, int | None], replicas: int, last: float | None, expected: dict[str, int]
) -> None:
    assert plan(readings, replicas, now=100.0, last=last, interval=15) == expected
