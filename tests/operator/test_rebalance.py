"""Table tests of the shed plan."""

from __future__ import annotations

import pytest

from clarion_operator.rebalance import due, shed_plan


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
