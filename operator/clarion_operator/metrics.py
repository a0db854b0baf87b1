"""The operator's own Prometheus metrics (names from ``clarion.names``), on their own port."""

from __future__ import annotations

from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from clarion import names


class OperatorMetrics:
    """One registry per operator run, so a restarted operator (tests) starts clean."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.desired = Gauge(
            names.M_OP_DESIRED,
            "Replicas the autoscaler wants for the gateway.",
            ["gateway"],
            registry=self.registry,
        )
        self.observed = Gauge(
            names.M_OP_OBSERVED,
            "WebSocket connections summed over the gateway's ready pods.",
            ["gateway"],
            registry=self.registry,
        )
        self.scale_events = Counter(
            names.M_OP_SCALE_EVENTS,
            "Replica changes made by the autoscaler.",
            ["gateway", "direction"],
            registry=self.registry,
        )
        self.orphans_deleted = Counter(
            names.M_OP_ORPHANS_DELETED,
            "Pod queues deleted because their pod is gone.",
            ["gateway"],
            registry=self.registry,
        )
        self._server: WSGIServer | None = None

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        """Serve ``/metrics`` on ``port`` (0: not at all)."""
        if port:
            self._server, _ = start_http_server(port, addr, registry=self.registry)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @staticmethod
    def key(namespace: str, name: str) -> str:
        """The ``gateway`` label: ``namespace/name``, unique across the cluster."""
        return f"{namespace}/{name}"
