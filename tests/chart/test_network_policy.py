"""Who reaches what under the rendered NetworkPolicies (issue 23, item 5).

A small evaluator of the NetworkPolicy semantics the chart uses (pod and namespace
selectors by matchLabels, ports by name): a pod is isolated for ingress once a
policy selects it, and a connection is allowed when some rule of some policy
selecting the target admits the peer on that port.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from clarion import names

from .helpers import NAMESPACE, RELEASE, Doc, find, kubernetes_validate, render

pytestmark = pytest.mark.timeout(60)


@dataclass(frozen=True)
class Pod:
    namespace: str
    labels: dict[str, str] = field(default_factory=dict)
    #: Labels of its namespace besides the one Kubernetes sets.
    more_namespace_labels: dict[str, str] = field(default_factory=dict)

    @property
    def namespace_labels(self) -> dict[str, str]:
        return {"kubernetes.io/metadata.name": self.namespace, **self.more_namespace_labels}


def matches(selector: dict[str, object], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, f"the evaluator knows matchLabels only: {selector}"
    wanted = selector.get("matchLabels") or {}
    assert isinstance(wanted, dict)
    return wanted.items() <= labels.items()


def admits(peer: dict[str, dict[str, object]], source: Pod, policy_namespace: str) -> bool:
    if "namespaceSelector" in peer:
        if not matches(peer["namespaceSelector"], source.namespace_labels):
            return False
    elif source.namespace != policy_namespace:
        return False
    return "podSelector" not in peer or matches(peer["podSelector"], source.labels)


def reaches(docs: list[Doc], source: Pod, target: Pod, port: str) -> bool:
    policies = [
        p
        for p in find(docs, "NetworkPolicy")
        if p["metadata"]["namespace"] == target.namespace
        and matches(p["spec"]["podSelector"], target.labels)
    ]
    if not policies:
        return True
    for policy in policies:
        for rule in policy["spec"].get("ingress") or []:
            ports = [p["port"] for p in rule.get("ports") or []]
            if ports and port not in ports:
                continue
            peers = rule.get("from")
            if not peers or any(admits(p, source, target.namespace) for p in peers):
                return True
    return False


GATEWAY = Pod(NAMESPACE, names.gateway_labels(RELEASE))
PROMETHEUS = Pod("monitoring", {"app.kubernetes.io/name": "prometheus"})
STRANGER = Pod("team-b", {"app": "something"})
BACKEND = Pod(NAMESPACE, {"app": "orders"})


def operator_and_broker(docs: list[Doc]) -> tuple[Pod, Pod]:
    pods = {
        d["kind"]: Pod(NAMESPACE, d["spec"]["template"]["metadata"]["labels"])
        for d in docs
        if d["kind"] in ("Deployment", "StatefulSet")
    }
    return pods["Deployment"], pods["StatefulSet"]


def test_prometheus_in_monitoring_scrapes_and_a_stranger_cannot_publish() -> None:
    docs = render(["networkPolicy.enabled=true"])
    kubernetes_validate(docs)
    operator, broker = operator_and_broker(docs)
    # kube-prometheus-stack and k8s/dev run Prometheus in "monitoring".
    assert reaches(docs, PROMETHEUS, GATEWAY, "api")  # /metrics
    assert reaches(docs, PROMETHEUS, operator, "metrics")
    assert reaches(docs, PROMETHEUS, broker, "prometheus")
    # The api port also serves /api/publish and /admin/shed.
    assert not reaches(docs, STRANGER, GATEWAY, "api")
    assert reaches(docs, STRANGER, GATEWAY, "http")  # clients
    assert reaches(docs, BACKEND, GATEWAY, "api")  # apiFrom's default: the release namespace
    assert reaches(docs, operator, GATEWAY, "api")
    assert not reaches(docs, STRANGER, broker, "amqp")
    assert not reaches(docs, STRANGER, operator, "metrics")


def test_metrics_from_names_who_scrapes() -> None:
    peer = "networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.team=observability"
    docs = render(["networkPolicy.enabled=true", peer])
    operator, broker = operator_and_broker(docs)
    scraper = Pod("obs", {"app": "prometheus"}, {"team": "observability"})
    for target, port in ((GATEWAY, "api"), (operator, "metrics"), (broker, "prometheus")):
        assert reaches(docs, scraper, target, port)
        assert not reaches(docs, PROMETHEUS, target, port)
