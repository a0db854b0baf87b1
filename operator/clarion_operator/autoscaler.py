"""One gateway's autoscaling tick: read the pods' connections, decide, apply.

The deciding is done by pure functions (``scaling.decide``, ``rebalance.plan``,
``status.scaled``); this class holds what must survive between ticks (the
scaling history, the time of the last rebalance) and makes the calls.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

import kopf

from . import rebalance, scaling, status
from .clients import GatewayPods
from .kube import Kube
from .metrics import OperatorMetrics
from .pods import PodView
from .spec import GatewaySpec


class Autoscaler:
    """One gateway's autoscaler: the state between ticks lives here, in memory only."""

    def __init__(
        self,
        namespace: str,
        name: str,
        kube: Kube,
        pods: GatewayPods,
        metrics: OperatorMetrics,
        logger: kopf.Logger,
    ) -> None:
        self.namespace = namespace
        self.name = name
        self.kube = kube
        self.pods = pods
        self.metrics = metrics
        self.logger = logger
        self.state = scaling.State(since=time.monotonic())
        self.last_rebalance: float | None = None
        self.key = OperatorMetrics.key(namespace, name)

    async def tick(self, body: kopf.Body, gs: GatewaySpec, pods: Iterable[PodView]) -> None:
        # Read.
        deployment = await self.kube.get("Deployment", self.namespace, self.name)
        if deployment is None:
            return  # `apply` creates it; nothing to scale yet
        current = scaling.current_replicas(deployment)
        serving = {p.name: p for p in pods if p.serving}
        readings = await self.pods.read_all(serving)
        now = time.monotonic()

        # Decide.
        decision = scaling.decide(
            current, list(readings.values()), now, self.state, scaling.Policy.from_spec(gs)
        )
        self.state = decision.state
        connections = sum(c for c in readings.values() if c is not None)
        direction = decision.direction(current)
        shed = {}
        if direction is None and gs.scaling.rebalance:
            shed = rebalance.plan(
                readings, current, now, self.last_rebalance, gs.scaling.interval_seconds
            )

        # Apply.
        self.metrics.observed.labels(self.key).set(connections)
        self.metrics.desired.labels(self.key).set(decision.replicas)
        scaled_at = None
        if direction is not None:
            await self.kube.patch(
                "Deployment", self.namespace, self.name, {"spec": {"replicas": decision.replicas}}
            )
            self.metrics.scale_events.labels(self.key, direction).inc()
            scaled_at = status.now_iso()
            self.report(
                body, "Scaled", f"{current} -> {decision.replicas} replicas: {decision.reason}"
            )
        elif shed:
            await self.rebalance(body, gs, serving, shed, now)
        delta = status.scaled(
            body.get("status"), decision, connections, deployment, len(serving), scaled_at
        )
        if delta:
            await self.kube.patch_gateway_status(self.namespace, self.name, delta)

    async def rebalance(
        self,
        body: kopf.Body,
        gs: GatewaySpec,
        serving: Mapping[str, PodView],
        plan: Mapping[str, int],
        now: float,
    ) -> None:
        """Ask the pods of the plan to shed; the cooldown starts even if it cannot be done."""
        self.last_rebalance = now
        token = await self.kube.secret_value(self.namespace, gs.auth.admin_token_secret_ref)
        if not token:
            self.logger.warning("pods are unbalanced but no admin token secret: not rebalancing")
            return
        done = await self.pods.shed_all(serving, plan, token)
        shed = ", ".join(f"{p}={n}" for p, n in done.items())
        self.report(body, "Rebalanced", f"asked pods to shed sockets: {shed}")

    def report(self, body: kopf.Body, reason: str, message: str) -> None:
        """An event on the gateway and a line in the log."""
        kopf.info(body, reason=reason, message=message)
        self.logger.info(message)
