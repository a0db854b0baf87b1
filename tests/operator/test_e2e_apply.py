"""End to end: a gateway gets its Deployment and Service; a restarted operator changes nothing."""

from __future__ import annotations

import time

import httpx
import pytest

from clarion import names
from tests.support import Vhost, wait_for

from .conftest import GATEWAY_RESOURCE, Cluster, running_operator

pytestmark = pytest.mark.timeout(60)


async def test_gateway_gets_deployment_and_service_and_restart_changes_nothing(
    cluster: Cluster, vhost: Vhost, metrics_port: int
) -> None:
    await cluster.secrets(vhost)
    async with running_operator(cluster):
        started = time.monotonic()
        await cluster.gateway("gw", replicas={"min": 2, "max": 6}, scaling={"intervalSeconds": 0.5})
        dep = await wait_for(
            lambda: cluster.get("apps/v1/deployments", "gw"), 20, message="Deployment"
        )
        svc = await wait_for(lambda: cluster.get("v1/services", "gw"), 20, message="Service")
        print(f"apply: Deployment and Service after {time.monotonic() - started:.2f} s")

        labels = names.gateway_labels("gw")
        gw = cluster.get(GATEWAY_RESOURCE, "gw")
        assert gw is not None
        for obj in (dep, svc):
            assert obj["metadata"]["labels"] == labels
            owner = obj["metadata"]["ownerReferences"][0]
            assert owner["uid"] == gw["metadata"]["uid"] and owner["controller"] is True
        assert dep["spec"]["replicas"] == 2
        assert dep["spec"]["template"]["metadata"]["labels"] == labels
        assert svc["spec"]["selector"] == labels

        def deployed() -> bool:
            gw = cluster.get(GATEWAY_RESOURCE, "gw") or {}
            conds = (gw.get("status") or {}).get("conditions") or []
            return any(c["type"] == "Deployed" and c["status"] == "True" for c in conds)

        await wait_for(deployed, 20, message="Deployed condition")
        await wait_for(lambda: cluster.events("Applied"), 20, message="an Applied event")

        # A spec change rolls out to both objects.
        await cluster.patch(
            GATEWAY_RESOURCE, "gw", {"spec": {"image": "img:2", "service": {"port": 8080}}}
        )

        def rolled_out() -> bool:
            dep = cluster.get("apps/v1/deployments", "gw") or {}
            svc = cluster.get("v1/services", "gw") or {}
            image = dep["spec"]["template"]["spec"]["containers"][0]["image"]
            return image == "img:2" and svc["spec"]["ports"][0]["port"] == 8080

        await wait_for(rolled_out, 20, message="the spec change rolled out")
        assert cluster.get("apps/v1/deployments", "gw")["spec"]["replicas"] == 2  # type: ignore[index]

        # The autoscaler owns replicas: pretend it scaled out, then restart the operator.
        await cluster.patch("apps/v1/deployments", "gw", {"spec": {"replicas": 4}})
        metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
        assert names.M_OP_DESIRED in metrics

    before = len(cluster.requests())
    versions = len(cluster.history("apps/v1/deployments", "gw"))
    async with running_operator(cluster):
        # Wait until the restarted operator has looked at everything: the resume handler
        # reads the Service, the autoscaler reads the Deployment a few times.
        def looked() -> bool:
            reqs = cluster.requests()[before:]
            gets = [r for r in reqs if r.method == "GET" and r.name == "gw" and r.resource]
            return sum(r.resource.plural == "services" for r in gets) >= 1 and (
                sum(r.resource.plural == "deployments" for r in gets) >= 3
            )

        await wait_for(looked, 20, message="the restarted operator to look around")

    assert cluster.writes("deployments", before) == []
    assert cluster.writes("services", before) == []
    assert len(cluster.history("apps/v1/deployments", "gw")) == versions
    assert (cluster.get("apps/v1/deployments", "gw") or {})["spec"]["replicas"] == 4


async def test_peering_uses_only_the_documented_calls(cluster: Cluster, metrics_port: int) -> None:
    """With peering on, kopf keeps a ClusterKopfPeering alive (with -A; KMock cannot serve the
    namespace listing kopf makes with --namespace, so that mode is not run here)."""
    r = await cluster.http.post(
        "/apis/kopf.dev/v1/clusterkopfpeerings",
        json={
            "apiVersion": "kopf.dev/v1",
            "kind": "ClusterKopfPeering",
            "metadata": {"name": "clarion"},
        },
    )
    assert r.status_code < 300, r.text

    def keepalive() -> bool:
        obj = cluster.k.objects["kopf.dev/v1/clusterkopfpeerings", None, "clarion"]
        return bool(obj.raw.get("status"))

    async with running_operator(cluster, ("-A", "--peering", "clarion")):
        await wait_for(keepalive, 20, message="the operator's peering keepalive")
