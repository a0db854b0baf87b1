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
    port: int | None  # the container port named ``http``
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


def http_port(pod: Mapping[str, Any]) -> int | None:
    """The container port named ``http`` (the gateway's only port)."""
    for container in pod.get("spec", {}).get("containers", []) or []:
        for port in container.get("ports", []) or []:
            if port.get("name") == names.HTTP_PORT_NAME and port.get("containerPort"):
                return int(port["containerPort"])
    return None


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
        port=http_port(pod),
        phase=str(status.get("phase", "Pending")),
        ready=ready,
        terminating=bool(meta.get("deletionTimestamp")),
    )
