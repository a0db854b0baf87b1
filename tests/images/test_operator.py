"""The operator image, run as the chart runs it, against the KMock emulator on loopback."""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path

import httpx
import pytest

from clarion_operator import applying, resources
from clarion_operator.spec import GatewaySpec
from tests.operator.conftest import (  # cluster: the emulator, KUBECONFIG set to it
    GATEWAY_RESOURCE,
    NS,
    Cluster,
    cluster,  # noqa: F401
)
from tests.support import Vhost, free_port, wait_for

from .conftest import Images
from .podman import LABEL, Containers, podman

pytestmark = [pytest.mark.images, pytest.mark.timeout(90, func_only=True)]

PEERING = "clarion-images"


async def test_operator_image_creates_the_gateways_deployment_and_service(
    containers: Containers,
    images: Images,
    cluster: Cluster,  # noqa: F811
    vhost: Vhost,
) -> None:
    k, kubeconfig = cluster, Path(os.environ["KUBECONFIG"])
    await k.secrets(vhost)
    # The chart creates the peering object the operator's --peering names.
    r = await k.http.post(
        "/apis/kopf.dev/v1/clusterkopfpeerings", json={"metadata": {"name": PEERING}}
    )
    assert r.status_code < 300, r.text
    liveness, metrics = free_port(), free_port()
    name = f"operator-{uuid.uuid4().hex[:8]}"
    containers.names.append(name)
    # The chart's container: its command and args (ports moved to free ones: host
    # networking), its securityContext (values.yaml) and its /tmp emptyDir; the kubeconfig
    # stands in for the service account.
    podman(
        "run", "-d", "--name", name, "--label", LABEL, "--network", "host",
        "--user", "10001:10001", "--read-only", "--read-only-tmpfs=false",
        "--tmpfs", "/tmp:rw,mode=1777,size=64m", "--cap-drop", "ALL",
        "--security-opt", "no-new-privileges",
        "-v", f"{kubeconfig}:/etc/clarion/kubeconfig:ro",
        "-e", "KUBECONFIG=/etc/clarion/kubeconfig",
        "-e", f"POD_NAME={name}", "-e", f"POD_NAMESPACE={NS}",
        "--entrypoint", '["clarion-operator"]',
        images.operator,
        "--all-namespaces", f"--peering={PEERING}",
        f"--liveness-port={liveness}", f"--metrics-port={metrics}",
    )  # fmt: skip

    async def alive() -> bool:
        state = await asyncio.to_thread(containers.state, name)
        assert state["Running"], f"operator exited: {containers.logs(name)}"
        async with httpx.AsyncClient(timeout=2) as http:
            return (await http.get(f"http://127.0.0.1:{liveness}/healthz")).status_code == 200

    try:
        await wait_for(alive, 30, 0.2, message="the operator's /healthz")
        await wait_for(lambda: k.watching("websocketgateways"), 30, message="watching gateways")
        await k.gateway("gw", image=images.gateway, auth={"mode": "jwt"})
        dep = await wait_for(
            lambda: k.get("apps/v1/deployments", "gw"), 30, 0.2, message="the Deployment"
        )
        await wait_for(lambda: k.get("v1/services", "gw"), 10, 0.2, message="the Service")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- operator log:\n{containers.logs(name)}") from None
    gw = k.get(GATEWAY_RESOURCE, "gw")
    assert gw is not None
    wanted = resources.deployment("gw", NS, GatewaySpec.parse(gw["spec"]), gw, replicas=2)
    assert applying.contains(dep, wanted), dep
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == images.gateway
    async with httpx.AsyncClient(timeout=5) as http:
        text = (await http.get(f"http://127.0.0.1:{metrics}/metrics")).text
    assert "clarion_operator" in text

    # SIGTERM: kopf stops cleanly, well inside a pod's default 30 s grace period.
    await asyncio.to_thread(podman, "stop", "--time", "30", name, timeout=60)
    state = containers.state(name)
    assert state["ExitCode"] == 0, containers.logs(name)
