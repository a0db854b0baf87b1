"""Which pod queues are orphans: pure functions, no broker and no Kubernetes.

Every gateway pod consumes its own queue ``<prefix><pod name>``. Pod names of a
Deployment are never reused, so once a pod object is gone its queue only
collects messages no one will read. A queue is an orphan when:

- its name has the pod-queue prefix (nothing else on the broker is touched);
- no pod object of that name exists: starting (Pending, not ready), running and
  terminating (draining) pods all still own their queue;
- no consumer is attached (a live process somewhere still reads it);
- the sweeper has seen it in that state for at least the grace period, which
  covers a pod whose queue appeared before the operator's watch saw the pod.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from clarion import names


@dataclass(frozen=True)
class QueueInfo:
    name: str
    consumers: int = 0


@dataclass(frozen=True)
class Sweep:
    delete: tuple[str, ...]  # orphans older than the grace: delete now
    first_seen: dict[str, float]  # orphan candidates and when they were first seen


def sweep(
    queues: Iterable[QueueInfo],
    live_pods: Collection[str],
    first_seen: Mapping[str, float],
    now: float,
    grace: float,
    prefix: str = names.QUEUE_PREFIX,
) -> Sweep:
    """Orphan queues to delete now, and the candidates to remember for the next sweep.

    ``first_seen`` is what the previous sweep returned; a queue that stops being
    a candidate (its pod appeared, a consumer attached) is forgotten, so its
    grace starts over if it ever becomes one again.
    """
    seen: dict[str, float] = {}
    delete: list[str] = []
    for q in queues:
        pod = names.pod_of_queue(q.name, prefix)
        if pod is None or pod in live_pods or q.consumers > 0:
            continue
        since = first_seen.get(q.name, now)
        if now - since >= grace:
            delete.append(q.name)
        else:
            seen[q.name] = since
    return Sweep(tuple(sorted(delete)), seen)


def queue_of_deleted_pod(pod: str, prefix: str = names.QUEUE_PREFIX) -> str:
    """The queue to delete when a pod object is gone (the pod process is gone with it)."""
    return names.queue_name(pod, prefix)
