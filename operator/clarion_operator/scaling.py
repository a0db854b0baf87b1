"""How many replicas a gateway should run: pure functions, no Kubernetes.

The shape follows the HorizontalPodAutoscaler: a recommendation is
``ceil(total / target)`` clamped to ``[min, max]``; scaling up takes the lowest
recommendation of the up-window (0 s: at once), scaling down the highest of the
down-window, so a desire that dips and comes back never removes pods; and a
scale-down removes at most ``max_down_step`` pods per decision.

WebSocket sockets do not move when pods are added, but every removed pod
disconnects all its clients at once: so scaling down is slow and cautious, and
never happens on missing data.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .spec import GatewaySpec


@dataclass(frozen=True)
class Policy:
    """The scaling knobs of one gateway (from its spec)."""

    min_replicas: int
    max_replicas: int
    target_per_pod: int
    up_window: float = 0.0
    down_window: float = 300.0
    max_down_step: int = 1

    @classmethod
    def from_spec(cls, spec: GatewaySpec) -> Policy:
        sc = spec.scaling
        return cls(
            spec.min_replicas,
            spec.max_replicas,
            sc.target_connections_per_pod,
            sc.scale_up_stabilization_seconds,
            sc.scale_down_stabilization_seconds,
            sc.max_scale_down_step,
        )

    def clamp(self, replicas: int) -> int:
        return max(self.min_replicas, min(self.max_replicas, replicas))


@dataclass(frozen=True)
class Recommendation:
    at: float
    replicas: int


@dataclass(frozen=True)
class State:
    """What the autoscaler remembers between decisions (lives in the daemon, not in the cluster).

    ``since`` is when observation began: a fresh operator (or a restarted one)
    has not seen the desire stay low for a whole window yet, so it cannot scale down.
    """

    since: float
    history: tuple[Recommendation, ...] = ()


@dataclass(frozen=True)
class Decision:
    replicas: int  # what the Deployment should have now
    recommendation: int | None  # this tick's clamped ceil(total/target); None if unknown
    reason: str
    state: State = field(repr=False)

    def direction(self, current: int) -> str | None:
        if self.replicas > current:
            return "up"
        if self.replicas < current:
            return "down"
        return None


def current_replicas(deployment: Mapping[str, Any]) -> int:
    """The Deployment's ``spec.replicas``; unset is the API server's default, 1."""
    replicas = (deployment.get("spec") or {}).get("replicas")
    return 1 if replicas is None else int(replicas)


def recommend(total: int, policy: Policy) -> int:
    """HPA-style: enough pods that none holds more than the target, clamped."""
    return policy.clamp(math.ceil(max(0, total) / max(1, policy.target_per_pod)))


def decide(
    current: int,
    connections: Sequence[int | None],
    now: float,
    state: State,
    policy: Policy,
) -> Decision:
    """The replica count for this tick, and the state to carry to the next.

    ``connections`` has one entry per pod that should be serving; ``None`` marks
    a pod whose metrics could not be read. Then the total is only a lower bound:
    scaling up on it is safe, scaling down is not, and it is not remembered.
    """
    history = _window(state.history, now, max(policy.up_window, policy.down_window))
    clamped = policy.clamp(current)

    unknown = not connections or any(c is None for c in connections)
    known_total = sum(c for c in connections if c is not None)
    rec = recommend(known_total, policy)

    if unknown:
        new_state = State(state.since, history)
        # A lower bound can still prove more pods are needed (with no up-window to wait out).
        if rec > clamped and policy.up_window <= 0:
            return Decision(rec, None, "scale up on partial metrics", new_state)
        if clamped != current:
            return Decision(clamped, None, "outside [min, max]", new_state)
        return Decision(current, None, "metrics unknown: holding", new_state)

    history = (*history, Recommendation(now, rec))
    new_state = State(state.since, history)
    up = min(r.replicas for r in _window(history, now, policy.up_window))
    down = max(r.replicas for r in _window(history, now, policy.down_window))

    if up > clamped:
        return Decision(up, rec, f"{known_total} connections want {rec}", new_state)
    if down < clamped:
        if now - state.since < policy.down_window:
            return Decision(clamped, rec, "scale-down window not yet observed", new_state)
        target = max(down, clamped - max(1, policy.max_down_step))
        return Decision(target, rec, f"{known_total} connections want {rec}", new_state)
    if clamped != current:
        return Decision(clamped, rec, "outside [min, max]", new_state)
    if rec > clamped:
        return Decision(current, rec, "waiting out the scale-up window", new_state)
    if rec < clamped:
        return Decision(current, rec, "waiting out the scale-down window", new_state)
    return Decision(current, rec, "steady", new_state)


def _window(
    history: Sequence[Recommendation], now: float, window: float
) -> tuple[Recommendation, ...]:
    """The recommendations in force during ``[now - window, now]``.

    A recommendation holds until the next one, so the newest one from before
    the window's start belongs to it too: a desire has "stayed low for 60 s"
    only if the recommendation in force 60 s ago was low as well.
    """
    start = now - window
    inside = [r for r in history if r.at >= start]
    if window <= 0:
        return tuple(inside)
    before = [r for r in history if r.at < start]
    return tuple(before[-1:] + inside)
