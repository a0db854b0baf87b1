"""broker/catchup.py: after losing the broker, deliver from history what the pod may have
lost, from ``MARGIN_MS`` before it lost contact; retry while the history cannot be read,
report a gap after ``give_up`` seconds.

The history is a list of envelopes read by a plain function (what RabbitMQ's stream
reader does, minus the broker); the listener records what the pod would deliver.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from clarion.broker.catchup import MARGIN_MS, CatchUp, CatchUpIncomplete
from clarion.message import Envelope, Target

pytestmark = pytest.mark.timeout(10)

BROADCAST = Target("broadcast")


def env(ts: int, n: int = 0) -> Envelope:
    return Envelope(id=f"m{ts}-{n}", target=BROADCAST, ts=ts, body=b"{}")


class Listener:
    """What the pod is told: messages (caught up or not) and gaps."""

    def __init__(self) -> None:
        self.delivered: list[tuple[int, bool]] = []
        self.gaps = 0

    def on_message(self, env: Envelope, caught_up: bool = False) -> None:
        self.delivered.append((env.ts, caught_up))

    def on_gap(self) -> None:
        self.gaps += 1

    # Not for the catch-up to call.
    def on_state(self, up: bool) -> None:  # pragma: no cover
        raise AssertionError("on_state")

    def on_bound(self, seconds: float) -> None:  # pragma: no cover
        raise AssertionError("on_bound")

    def on_bind_error(self, keys: int) -> None:  # pragma: no cover
        raise AssertionError("on_bind_error")

    def on_connected(
        self, address: str, reconnect_seconds: float | None
    ) -> None:  # pragma: no cover
        raise AssertionError("on_connected")


class History:
    """Reads every stored message from ``since`` on (as a stream read by timestamp does,
    it may hand over a little more: the catch-up filters)."""

    def __init__(self, messages: list[Envelope], ok: bool = True, slack_ms: int = 0) -> None:
        self.messages = messages
        self.ok = ok
        self.slack_ms = slack_ms
        #: (since, timeout) of every read
        self.reads: list[tuple[int, float]] = []

    async def __call__(
        self, since: int, deliver: Callable[[Envelope], object], timeout: float
    ) -> bool:
        self.reads.append((since, timeout))
        for m in self.messages:
            if m.ts >= since - self.slack_ms:
                deliver(m)
        return self.ok


def now_ms() -> int:
    return int(time.time() * 1000)


async def test_no_loss_reads_nothing() -> None:
    history, listener = History([env(1)]), Listener()
    c = CatchUp()
    c.consumed(now_ms())
    await c.run(history, listener)
    assert history.reads == [] and listener.delivered == [] and listener.gaps == 0


async def test_it_reads_from_a_margin_before_the_loss_and_delivers_as_caught_up() -> None:
    c = CatchUp(timeout=7.5)
    c.lost()
    lost = c.lost_at
    assert lost is not None and abs(lost - now_ms()) < 1000
    since = lost - MARGIN_MS
    history = History([env(since - 1), env(since), env(since + 1), env(lost + 50)], slack_ms=500)
    listener = Listener()
    await c.run(history, listener)
    assert history.reads == [(since, 7.5)]
    # The edge is kept, its neighbour before it is not (a stream seek hands over more).
    assert listener.delivered == [(since, True), (since + 1, True), (lost + 50, True)]
    assert c.lost_at is None and listener.gaps == 0


async def test_a_pod_behind_its_queue_reads_from_its_last_consumed_message() -> None:
    c = CatchUp()
    c.lost()
    assert c.lost_at is not None
    last = c.lost_at - 10_000  # the pod had consumed nothing for 10 s before the loss
    c.consumed(last)
    history, listener = History([]), Listener()
    await c.run(history, listener)
    assert history.reads[0][0] == last - MARGIN_MS


@pytest.mark.parametrize("late", [0.0, 0.25, 5.0, 30.0])
async def test_it_reaches_back_as_late_as_a_message_may_arrive(late: float) -> None:
    """A message accepted ``late`` s before the last one consumed may reach the broker after it."""
    c = CatchUp(late=late)
    c.lost()
    assert c.lost_at is not None
    last = c.lost_at - 100
    c.consumed(last)
    straggler = last - int(late * 1000)
    history = History([env(straggler - MARGIN_MS - 1), env(straggler), env(last)], slack_ms=50)
    listener = Listener()
    await c.run(history, listener)
    assert history.reads[0][0] == straggler - MARGIN_MS
    assert listener.delivered == [(straggler, True), (last, True)]


async def test_a_last_message_after_the_loss_does_not_move_the_start_later() -> None:
    c = CatchUp()
    c.lost()
    lost = c.lost_at
    assert lost is not None
    c.consumed(lost + 5_000)  # the publisher's clock runs ahead of the pod's
    history = History([])
    await c.run(history, Listener())
    assert history.reads[0][0] == lost - MARGIN_MS


async def test_one_catch_up_per_loss() -> None:
    c = CatchUp()
    c.lost()
    history = History([])
    await c.run(history, Listener())
    await c.run(history, Listener())
    assert len(history.reads) == 1
    c.lost()
    await c.run(history, Listener())
    assert len(history.reads) == 2


async def test_an_unreadable_history_is_retried_on_the_next_connection_from_the_same_point() -> (
    None
):
    c = CatchUp(give_up=60)
    c.lost()
    history, listener = History([], ok=False), Listener()
    with pytest.raises(CatchUpIncomplete):
        await c.run(history, listener)
    assert c.lost_at is not None and listener.gaps == 0
    history.ok = True
    await c.run(history, listener)
    assert history.reads[0][0] == history.reads[1][0]
    assert c.lost_at is None and listener.gaps == 0


async def test_after_give_up_seconds_an_unreadable_history_is_a_gap() -> None:
    c = CatchUp(give_up=60)
    c.lost()
    assert c.lost_at is not None
    c.lost_at -= 60_000 + 1  # the pod lost the broker just over a minute ago
    history, listener = History([env(now_ms())], ok=False), Listener()
    await c.run(history, listener)  # no exception: it gives up
    assert listener.gaps == 1 and c.lost_at is None
    # What it could read is still delivered.
    assert len(listener.delivered) == 1


async def test_just_inside_give_up_it_still_retries() -> None:
    c = CatchUp(give_up=60)
    c.lost()
    assert c.lost_at is not None
    c.lost_at -= 59_000
    with pytest.raises(CatchUpIncomplete):
        await c.run(History([], ok=False), Listener())


async def test_give_up_zero_reports_the_gap_on_the_first_failure() -> None:
    c = CatchUp(give_up=0)
    c.lost()
    listener = Listener()
    await c.run(History([], ok=False), listener)
    assert listener.gaps == 1
