"""Applying: how a live object is made to hold what resources.py built, and nothing stale.

``contains`` says whether the live object already holds every built field (the
API server's defaults are extra fields, not changes), so a re-run or an
operator restart sends nothing; the record of what was applied last
(``clarion.dev/applied``) lets ``plan`` remove a field the spec no longer asks
for. Pure functions.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

#: What the operator last applied to an object (JSON): a field the spec no longer
#: asks for is then removed, not left behind (``contains`` ignores extra fields).
APPLIED_ANNOTATION = "clarion.dev/applied"


def _record(body: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a built object the operator owns: labels, annotations, spec (not replicas)."""
    meta = body.get("metadata", {})
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items()}
    annotations.pop(APPLIED_ANNOTATION, None)
    spec = {k: v for k, v in body.get("spec", {}).items() if k != "replicas"}
    return {
        "metadata": {"labels": meta.get("labels") or {}, "annotations": annotations},
        "spec": spec,
    }


def recorded(body: Mapping[str, Any]) -> dict[str, Any]:
    """``body`` carrying the record of itself, to be written as is."""
    out = json.loads(json.dumps(body))
    annotations = out["metadata"].setdefault("annotations", {})
    annotations[APPLIED_ANNOTATION] = json.dumps(_record(body), sort_keys=True)
    return dict(out)


def removals(last: Any, wanted: Any) -> Any:
    """A merge patch of nulls for what ``last`` set and ``wanted`` no longer does.

    Lists are replaced whole by a merge patch, so only mapping keys need a null.
    """
    if not (isinstance(last, Mapping) and isinstance(wanted, Mapping)):
        return {}
    out: dict[str, Any] = {}
    for key, value in last.items():
        if key not in wanted:
            out[key] = None
        else:
            inner = removals(value, wanted[key])
            if inner:
                out[key] = inner
    return out


def _merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if key in out and isinstance(out[key], Mapping) and isinstance(value, Mapping):
            out[key] = _merge(out[key], value)
        elif key not in out:
            out[key] = value
    return out


def plan(live: Mapping[str, Any], wanted: Mapping[str, Any]) -> dict[str, Any] | None:
    """The merge patch that makes ``live`` what ``wanted`` says; None when it already is.

    A change is: something ``wanted`` has that ``live`` lacks (a hand edit, a
    spec change), or something the operator applied last time that ``wanted``
    no longer has (a removed limit, node selector, annotation).
    """
    body = recorded(wanted)
    raw = (live.get("metadata", {}).get("annotations") or {}).get(APPLIED_ANNOTATION)
    try:
        last = json.loads(raw) if raw else {}
    except ValueError:
        last = {}
    gone = removals(last, _record(wanted))
    if contains(live, body) and not gone:
        return None
    return _merge(body, gone)


def contains(live: Any, wanted: Any) -> bool:
    """Whether ``live`` already holds everything in ``wanted`` (extra live fields are fine).

    The API server adds defaults (protocols, pull policies, status); those must
    not make an idempotent re-apply look like a change.
    """
    if isinstance(wanted, Mapping):
        return isinstance(live, Mapping) and all(
            k in live and contains(live[k], v) for k, v in wanted.items()
        )
    if isinstance(wanted, list):
        return (
            isinstance(live, list)
            and len(live) == len(wanted)
            and all(contains(a, b) for a, b in zip(live, wanted, strict=True))
        )
    return bool(live == wanted)
