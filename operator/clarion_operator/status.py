"""What the operator writes in a gateway's status: pure functions from what it saw.

Each builder returns only the fields that changed (empty: write nothing), so a
handler that runs twice writes once. Conditions are Kubernetes style: one entry
per type, the transition time kept while the status stays the same.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from typing import Any

from .scaling import Decision

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


def applied(
    status: Mapping[str, Any] | None, generation: int | None = None, selector: str | None = None
) -> dict[str, Any]:
    """After ``apply`` made the Deployment and Services match the spec of ``generation``.

    ``selector`` is the pods' label selector (the scale subresource reads it).
    """
    status = status or {}
    conditions = set_condition(
        status.get("conditions"), DEPLOYED, True, "Applied", "Deployment and Service match the spec"
    )
    wanted: dict[str, Any] = {"conditions": conditions}
    if generation is not None:
        wanted["observedGeneration"] = int(generation)
    if selector is not None:
        wanted["selector"] = selector
    return changed(status, wanted)


def scaled(
    status: Mapping[str, Any] | None,
    decision: Decision,
    connections: int,
    deployment: Mapping[str, Any],
    serving: int,
    scaled_at: str | None = None,
    now: str | None = None,
) -> dict[str, Any]:
    """After an autoscaler tick: the fields it owns (``scaled_at`` when it changed replicas)."""
    status = status or {}
    known = decision.recommendation is not None
    ready = (deployment.get("status") or {}).get("readyReplicas")
    wanted: dict[str, Any] = {
        "connections": connections,
        "desiredReplicas": decision.recommendation if known else decision.replicas,
        "replicas": decision.replicas,
        # The Deployment's own count, else the serving pods seen (a young Deployment).
        "readyReplicas": int(ready or serving),
        "conditions": set_condition(
            status.get("conditions"),
            SCALING_ACTIVE,
            known,
            "MetricsRead" if known else "MetricsUnknown",
            decision.reason,
            now,
        ),
    }
    if scaled_at is not None:
        wanted["lastScaleTime"] = scaled_at
    return changed(status, wanted)


def orphans_counted(status: Mapping[str, Any] | None, deleted: int) -> dict[str, Any]:
    """``orphanQueuesDeleted`` after ``deleted`` more queues went."""
    before = int((status or {}).get("orphanQueuesDeleted") or 0)
    return changed(status, {"orphanQueuesDeleted": before + deleted})
