"""How many sockets each pod should shed so that load spreads: pure functions.

New pods after a scale-out start empty, because WebSocket clients stay where
they connected. A pod holding more than ``(1 + tolerance)`` times the mean is
asked to close its excess over the mean with 1012 ("reconnect elsewhere"); the
clients reconnect through the load balancer and most land on the emptier pods.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

#: How far above the mean a pod may be before it is asked to shed.
DEFAULT_TOLERANCE = 0.25
#: A rebalance waits this many scaling intervals after the previous one, so the
#: reconnected clients show up in the metrics before the next judgement.
COOLDOWN_INTERVALS = 4


def shed_plan(
    connections: Mapping[str, int], tolerance: float = DEFAULT_TOLERANCE
) -> dict[str, int]:
    """Pod name -> sockets to shed (only pods with something to shed appear)."""
    if len(connections) < 2:
        return {}
    total = sum(max(0, c) for c in connections.values())
    mean = total / len(connections)
    if mean < 1:
        return {}
    plan: dict[str, int] = {}
    for pod, count in sorted(connections.items()):
        if count > (1 + tolerance) * mean:
            excess = math.floor(count - mean)
            if excess >= 1:
                plan[pod] = excess
    return plan


def settled(serving: int, replicas: int) -> bool:
    """Every pod the Deployment wants is serving: none starting, none draining on top.

    Judging balance before that would count a pod that is about to fill (or go).
    """
    return serving == replicas


def plan(
    readings: Mapping[str, int | None],
    replicas: int,
    now: float,
    last: float | None,
    interval: float,
    tolerance: float = DEFAULT_TOLERANCE,
) -> dict[str, int]:
    """This tick's shed plan: none unless every serving pod was read, the Deployment
    has settled and the cooldown since the ``last`` rebalance is over."""
    if not readings or any(c is None for c in readings.values()):
        return {}
    if not settled(len(readings), replicas) or not due(now, last, interval):
        return {}
    return shed_plan({p: c for p, c in readings.items() if c is not None}, tolerance)


def due(now: float, last: float | None, interval: float) -> bool:
    """Rate limit: at most one rebalance per ``COOLDOWN_INTERVALS`` scaling intervals."""
    return last is None or now - last >= COOLDOWN_INTERVALS * interval
