"""Status conditions, Kubernetes style: one entry per type, transition time kept when unchanged."""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from typing import Any

#: The Deployment and Service match the spec.
DEPLOYED = "Deployed"
#: The autoscaler could read every serving pod's connections on its last tick.
SCALING_ACTIVE = "ScalingActive"


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: Iterable[Mapping[str, Any]] | None,
    type_: str,
    status: bool,
    reason: str,
    message: str,
    now: str | None = None,
) -> list[dict[str, Any]]:
    """The condition list with ``type_`` set; other types are kept as they are."""
    value = "True" if status else "False"
    result: list[dict[str, Any]] = []
    found = False
    for cond in conditions or []:
        if cond.get("type") != type_:
            result.append(dict(cond))
            continue
        found = True
        same = cond.get("status") == value
        result.append(
            {
                "type": type_,
                "status": value,
                "reason": reason,
                "message": message,
                "lastTransitionTime": cond.get("lastTransitionTime") if same else now or now_iso(),
            }
        )
    if not found:
        result.append(
            {
                "type": type_,
                "status": value,
                "reason": reason,
                "message": message,
                "lastTransitionTime": now or now_iso(),
            }
        )
    return result


def changed(current: Mapping[str, Any] | None, wanted: Mapping[str, Any]) -> dict[str, Any]:
    """The part of ``wanted`` that differs from ``current``: an unchanged status is not written."""
    current = current or {}
    return {k: v for k, v in wanted.items() if current.get(k) != v}
