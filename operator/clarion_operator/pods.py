"""A gateway pod as the operator sees it: parsed once from the pod object, then plain data."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from clarion import names


@dataclass(frozen=True)
class PodView:
    name: str
    namespace: str
    gateway: str
    ip: str | None
    port: int | None  # the container port named ``api``, else ``http`` (``api_port``)
    phase: str
    ready: bool
    terminating: bool

    @property
    def serving(self) -> bool:
        """Running, Ready and not terminating: the pods that hold connections worth counting."""
        return (
            self.phase == "Running"
            and self.ready
            and not self.terminating
            and bool(self.ip)
            and self.port is not None
        )

    @property
    def metrics_url(self) -> str:
        return f"http://{self.ip}:{self.port}/metrics"

    @property
    def base_url(self) -> str:
        return f"http://{self.ip}:{self.port}"


#: The internal port (``/metrics``, ``/admin/shed``); without one they are on ``http``.
API_PORT_NAME = "api"


def api_port(pod: Mapping[str, Any]) -> int | None:
    """The port the operator reads ``/metrics`` and posts ``/admin/shed`` on."""
    found: dict[str, int] = {}
    for container in pod.get("spec", {}).get("containers", []) or []:
        for port in container.get("ports", []) or []:
            if port.get("containerPort"):
                found.setdefault(str(port.get("name")), int(port["containerPort"]))
    return found.get(API_PORT_NAME, found.get(names.HTTP_PORT_NAME))


def parse_pod(pod: Mapping[str, Any]) -> PodView:
    meta = pod.get("metadata", {}) or {}
    status = pod.get("status", {}) or {}
    conditions = status.get("conditions", []) or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    return PodView(
        name=str(meta.get("name", "")),
        namespace=str(meta.get("namespace", "")),
        gateway=str((meta.get("labels") or {}).get(names.LABEL_GATEWAY, "")),
        ip=status.get("podIP") or None,
        port=api_port(pod),
        phase=str(status.get("phase", "Pending")),
        ready=ready,
        terminating=bool(meta.get("deletionTimestamp")),
    )
