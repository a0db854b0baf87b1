"""End to end: what the operator owns stays what the spec says, without an operator restart."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support import Vhost, wait_for

from .conftest import GATEWAY_RESOURCE, Cluster, running_operator

pytestmark = pytest.mark.timeout(60)

DEPLOYMENTS, SERVICES = "apps/v1/deployments", "v1/services"


def _container(cluster: Cluster) -> dict[str, Any]:
    dep = cluster.get(DEPLOYMENTS, "gw") or {}
    pod = (dep.get("spec") or {}).get("template", {}).get("spec", {})
    return dict((pod.get("containers") or [{}])[0])


async def test_deleted_edited_and_removed_fields_are_reapplied(
    cluster: Cluster, vhost: Vhost, metrics_port: int
) -> None:
    await cluster.secrets(vhost)
    limits = {"cpu": "1", "memory": "512Mi"}
    async with running_operator(cluster):
        await cluster.gateway(
            "gw",
            resources={"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": limits},
            nodeSelector={"pool": "ws"},
            scaling={"intervalSeconds": 30},
        )
        for resource, name in ((DEPLOYMENTS, "gw"), (SERVICES, "gw"), (SERVICES, "gw-api")):
            await wait_for(lambda r=resource, n=name: cluster.get(r, n), 20, message=name)  # type: ignore[misc]

        def observed() -> int | None:
            gw = cluster.get(GATEWAY_RESOURCE, "gw") or {}
            return (gw.get("status") or {}).get("observedGeneration")

        assert await wait_for(lambda: observed() == 1, 20, message="observedGeneration 1")
        gw = cluster.get(GATEWAY_RESOURCE, "gw") or {}
        assert gw["status"]["selector"] == (
            "app.kubernetes.io/name=clarion,app.kubernetes.io/instance=gw,clarion.dev/gateway=gw"
        )

        # A deleted Deployment comes back (the gateway's pods with it).
        await cluster.delete(DEPLOYMENTS, "gw")
        await wait_for(lambda: cluster.get(DEPLOYMENTS, "gw"), 20, message="Deployment re-created")

        # A hand edit of the Service is undone.
        await cluster.patch(SERVICES, "gw", {"spec": {"ports": [{"name": "http", "port": 1}]}})

        def service_port() -> int:
            svc = cluster.get(SERVICES, "gw") or {}
            return int(svc["spec"]["ports"][0]["port"])

        await wait_for(lambda: service_port() == 80, 20, message="Service port restored")

        # Removing the CPU limit and the node selector from the spec removes them.
        await cluster.patch(
            GATEWAY_RESOURCE,
            "gw",
            {"spec": {"resources": {"limits": {"cpu": None}}, "nodeSelector": None}},
        )

        def removed() -> bool:
            dep = cluster.get(DEPLOYMENTS, "gw") or {}
            pod = dep["spec"]["template"]["spec"]
            return (
                "cpu" not in _container(cluster)["resources"]["limits"]
                and "nodeSelector" not in pod
            )

        await wait_for(removed, 20, message="the removed limit and node selector gone")
        assert _container(cluster)["resources"]["limits"] == {"memory": "512Mi"}
        assert await wait_for(lambda: observed() == 2, 20, message="observedGeneration 2")
