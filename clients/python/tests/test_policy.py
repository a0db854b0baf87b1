"""The close-code policy and the reconnect delays: what the client does after each code
(the table, then the ranges), and the backoff's bounds."""

from __future__ import annotations

import pytest

from clarion_client import Action, Backoff, close_action, reconnect_delay

pytestmark = pytest.mark.timeout(30)

# --- the table -------------------------------------------------------------

EXPECTED = {
    1000: Action.STOP,
    1001: Action.SOON,
    1006: Action.BACKOFF,
    1008: Action.FATAL,
    1009: Action.FATAL,
    1011: Action.BACKOFF,
    1012: Action.SOON,
    1013: Action.SLOW,
    4000: Action.BACKOFF,
    4001: Action.TOKEN,
    4002: Action.BACKOFF,
    4499: Action.BACKOFF,
    4500: Action.FATAL,
    4501: Action.FATAL,
    4502: Action.FATAL,
    4999: Action.FATAL,
    3000: Action.BACKOFF,
    5000: Action.BACKOFF,
    1002: Action.BACKOFF,
}


@pytest.mark.parametrize("code", sorted(EXPECTED))
def test_close_action_of_each_code_and_range_edge(code: int) -> None:
    assert close_action(code) is EXPECTED[code]


# --- backoff ---------------------------------------------------------------


def test_backoff_is_full_jitter_and_bounded() -> None:
    top = Backoff(base=0.5, max=20, random=lambda: 0.999999)
    ceilings = [top.next() for _ in range(10)]
    assert ceilings[:4] == pytest.approx([0.5, 1, 2, 4], rel=1e-4)
    assert max(ceilings) == pytest.approx(20, rel=1e-4)  # capped
    bottom = Backoff(random=lambda: 0.0)
    assert [bottom.next() for _ in range(5)] == [0.0] * 5  # full jitter reaches zero
    top.reset()
    assert top.next() == pytest.approx(0.5, rel=1e-4)


def test_slow_is_at_least_two_seconds_and_at_most_max() -> None:
    low = Backoff(random=lambda: 0.0)
    high = Backoff(random=lambda: 0.999999)
    assert all(low.slow() == 2.0 for _ in range(5))
    assert all(2.0 <= high.slow() <= 20.0 for _ in range(40))
    assert high.attempts == 40  # slow grows the backoff too


def test_soon_is_a_small_spread_that_does_not_grow() -> None:
    b = Backoff(random=lambda: 0.999999)
    assert all(b.soon() < 1.0 for _ in range(20))
    assert b.attempts == 0


@pytest.mark.parametrize("action", [Action.SOON, Action.TOKEN, Action.BACKOFF])
def test_a_close_before_the_welcome_always_backs_off(action: Action) -> None:
    b = Backoff(base=1, max=8, random=lambda: 0.999999)
    delays = [reconnect_delay(b, action, welcomed=False) for _ in range(4)]
    assert delays == pytest.approx([1, 2, 4, 8], rel=1e-4)


def test_after_a_welcome_soon_and_token_do_not_grow() -> None:
    b = Backoff(random=lambda: 0.999999)
    assert reconnect_delay(b, Action.TOKEN, welcomed=True) == 0
    assert reconnect_delay(b, Action.SOON, welcomed=True) < 1
    assert b.attempts == 0
    assert reconnect_delay(b, Action.SLOW, welcomed=True) >= 2
