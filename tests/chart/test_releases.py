"""Several releases in one cluster (issue 23, item 4): an operator-less release, names of
cluster-scoped objects that include the namespace, and one operator per namespace."""

from __future__ import annotations

import pytest

from tests.operator import conftest as harness
from tests.operator.conftest import NS, Cluster

from .helpers import RELEASE, find, kubernetes_validate, one, render
from .test_lookup import peering, render_live

pytestmark = pytest.mark.timeout(60)

#: The emulated API server of tests/operator, with KUBECONFIG pointing at it.
cluster = harness.cluster
CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding", "ClusterKopfPeering"}
OPERATOR_KINDS = {"Deployment", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role"}


def test_a_release_without_an_operator_renders_the_gateway_only() -> None:
    sets = ["operator.enabled=false", "networkPolicy.enabled=true"]
    docs = render([*sets, "metrics.serviceMonitor.enabled=true"])
    kubernetes_validate(docs)
    assert one(docs, "WebSocketGateway")
    kinds = {d["kind"] for d in docs if "operator" in d["metadata"]["name"]}
    assert kinds == set(), kinds
    assert not find(docs, "ClusterRole") and not find(docs, "ClusterKopfPeering")
    assert not find(docs, "KopfPeering")
    # The operator of another release (another namespace) still reaches the api port.
    gw = one(docs, "NetworkPolicy", RELEASE)
    api = next(r for r in gw["spec"]["ingress"] if r["ports"] == [{"port": "api"}])
    assert {
        "namespaceSelector": {},
        "podSelector": {
            "matchLabels": {
                "app.kubernetes.io/component": "operator",
                "app.kubernetes.io/part-of": "clarion",
            }
        },
    } in api["from"]


@pytest.mark.parametrize("watch", [[], ["operator.watchNamespace=team-a"]])
def test_cluster_scoped_names_include_the_namespace(watch: list[str]) -> None:
    """Two releases of one name in two namespaces do not fight over one ClusterRole."""
    from .helpers import CHART, KUBE_VERSION, load_docs, run, tool

    def names_in(namespace: str) -> set[str]:
        cmd = [tool("helm"), "template", RELEASE, str(CHART), "--namespace", namespace]
        cmd += ["--kube-version", KUBE_VERSION, *[a for s in watch for a in ("--set", s)]]
        if watch:
            cmd[cmd.index("operator.watchNamespace=team-a")] = (
                f"operator.watchNamespace={namespace}"
            )
        docs = load_docs(run(cmd).stdout)
        return {
            f"{d['kind']}/{d['metadata']['name']}"
            for d in docs
            if d["kind"] in CLUSTER_SCOPED and d["kind"] != "ClusterKopfPeering"
        }

    a, b = names_in("team-a"), names_in("team-b")
    assert a and b and not a & b, (a, b)


async def test_a_second_operator_for_one_namespace_is_refused(cluster: Cluster) -> None:
    await peering(cluster, "KopfPeering", "first-clarion", (NS, "first"), ns=NS)
    proc = await render_live(["operator.watchNamespace=" + NS], check=False)
    assert proc.returncode != 0
    assert f"release {NS}/first runs a Clarion operator for namespace {NS} already" in proc.stderr
    # A gateway-only release there is what the message suggests, and it renders.
    docs = await render_live(["operator.enabled=false"])
    assert one(docs, "WebSocketGateway") and not find(docs, "Deployment")
    # The release that owns the peering upgrades.
    assert one(await render_live(["operator.watchNamespace=" + NS], release="first"), "KopfPeering")
