"""The chart's pre-delete hook (``python -m clarion_operator.uninstall``) as a real process."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from tests.support import Vhost, wait_for

from .conftest import GATEWAY_RESOURCE, Cluster, running_operator

pytestmark = pytest.mark.timeout(60)

FINALIZER = "clarion.dev/operator"
#: What the chart's hook Role grants (tests/chart checks the rendered Role).
HOOK_RBAC = {("clarion.dev", "websocketgateways", v) for v in ("list", "delete", "patch")}


def hook_calls(cluster: Cluster) -> set[tuple[str, str, str]]:
    calls = set()
    for r in cluster.requests():
        if r.resource is None or not str(r.headers.get("User-Agent", "")).startswith("clarion-"):
            continue
        verb = {"GET": "list", "DELETE": "delete", "PATCH": "patch"}[str(r.method.value)]
        calls.add((r.resource.group or "", r.resource.plural or "", verb))
    return calls


async def hook(release: str, timeout: float) -> str:
    cmd = [sys.executable, "-m", "clarion_operator.uninstall", "--namespace", "clarion-test"]
    cmd += ["--release", release, "--timeout", str(timeout)]
    proc = await asyncio.to_thread(
        subprocess.run, cmd, capture_output=True, text=True, timeout=40, env=dict(os.environ)
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


async def labelled(cluster: Cluster, name: str, release: str) -> None:
    await cluster.gateway(name)
    await cluster.patch(
        GATEWAY_RESOURCE, name, {"metadata": {"labels": {"clarion.dev/release": release}}}
    )


async def test_the_hook_deletes_the_release_gateways_while_the_operator_runs(
    cluster: Cluster, vhost: Vhost, metrics_port: int
) -> None:
    await cluster.secrets(vhost)
    async with running_operator(cluster):
        await labelled(cluster, "gw", "rel")
        await labelled(cluster, "other", "another-release")

        def finalized() -> bool:
            gw = cluster.get(GATEWAY_RESOURCE, "gw") or {}
            return FINALIZER in (gw.get("metadata") or {}).get("finalizers", [])

        await wait_for(finalized, 20, message="the operator's finalizer on the gateway")
        out = await hook("rel", timeout=20)
        assert "gateways deleted by the operator: gw" in out and "finalizers removed" not in out
        assert cluster.get(GATEWAY_RESOURCE, "gw") is None
        assert cluster.get(GATEWAY_RESOURCE, "other") is not None  # not this release's


async def test_without_the_operator_the_hook_lets_the_gateway_go(cluster: Cluster) -> None:
    """A finalizer nobody removes keeps a deleted gateway Terminating; the hook ends that."""
    await labelled(cluster, "gw", "rel")
    await cluster.patch(GATEWAY_RESOURCE, "gw", {"metadata": {"finalizers": [FINALIZER]}})
    await cluster.delete(GATEWAY_RESOURCE, "gw")
    stuck = cluster.get(GATEWAY_RESOURCE, "gw") or {}
    assert stuck["metadata"].get("deletionTimestamp")  # what `helm uninstall` used to leave
    out = await hook("rel", timeout=0.5)
    assert "finalizers removed: gw" in out
    assert cluster.get(GATEWAY_RESOURCE, "gw") is None
    assert hook_calls(cluster) == HOOK_RBAC
