"""ratelimit.py: a token bucket of ``rate`` per second with bursts up to twice that.

The limiter reads the real monotonic clock; every bound below allows for the tokens that
time itself adds while the test runs (a busy machine can pause it for a while).
"""

from __future__ import annotations

import time

import pytest

from clarion.ratelimit import RateLimiter

pytestmark = pytest.mark.timeout(10)


def drain(limiter: RateLimiter) -> tuple[int, float]:
    """Take tokens until one is refused: (how many were allowed, seconds it took)."""
    t0 = time.monotonic()
    allowed = 0
    while limiter.allow():
        allowed += 1
    return allowed, time.monotonic() - t0


@pytest.mark.parametrize(
    ("rate", "burst"),
    [(0.1, 1), (0.5, 1), (0.6, 1.2), (1, 2), (5, 10), (250, 500)],
    ids=["0.1/s", "0.5/s", "0.6/s", "1/s", "5/s", "250/s"],
)
def test_a_fresh_limiter_allows_one_burst_then_refuses(rate: float, burst: float) -> None:
    limiter = RateLimiter(rate)
    assert limiter.burst == pytest.approx(burst)
    allowed, took = drain(limiter)
    whole = int(burst)  # a fraction of a token sends nothing
    assert whole <= allowed <= whole + took * rate + 1
    assert not limiter.allow()


def test_a_rate_below_one_still_allows_one_frame() -> None:
    assert RateLimiter(0.001).allow()


def test_a_token_comes_back_after_one_over_rate_seconds() -> None:
    rate = 20.0
    limiter = RateLimiter(rate)
    drain(limiter)
    refused_at = time.monotonic()
    while not limiter.allow():
        assert time.monotonic() - refused_at < 5, "no token came back"
        time.sleep(0.002)
    # The refused call had left less than one token: the next comes within 1/rate.
    assert time.monotonic() - refused_at <= 1 / rate + 0.5
    assert not limiter.allow()  # one token, not a new burst


def test_idle_time_saves_up_one_burst_at_most() -> None:
    limiter = RateLimiter(5)
    drain(limiter)
    limiter.last -= 3600  # an hour without a frame
    allowed, took = drain(limiter)
    assert 10 <= allowed <= 10 + took * 5 + 1


def test_a_steady_sender_gets_the_rate_after_the_burst() -> None:
    rate = 200.0
    before = time.monotonic()
    limiter = RateLimiter(rate)
    after = time.monotonic()
    allowed = 0
    last = after
    while (now := time.monotonic()) - after < 0.3:
        last = now  # before this call: the tokens it saw had refilled at least until here
        allowed += limiter.allow()
    # Bounds from the clock around the limiter's creation and its last call.
    assert limiter.burst + rate * (last - after) - 2 <= allowed
    assert allowed <= limiter.burst + rate * (time.monotonic() - before) + 1
