"""What the chart reads from the cluster at install/upgrade (lookup), rendered with
`helm template --dry-run=server` against the KMock emulator as the API server."""

from __future__ import annotations

import asyncio
import base64
import os
from typing import Any

import pytest

from tests.operator import conftest as harness
from tests.operator.conftest import NS, Cluster

from .helpers import CHART, RELEASE, find, load_docs, one, run, tool

pytestmark = pytest.mark.timeout(60)

#: The emulated API server of tests/operator, with KUBECONFIG pointing at it.
cluster = harness.cluster


def _b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


async def render_live(
    sets: list[str] = (),
    release: str = RELEASE,
    check: bool = True,  # type: ignore[assignment]
) -> Any:
    """`helm template --dry-run=server`: lookups answered by the emulator (KUBECONFIG)."""
    cmd = [tool("helm"), "template", release, str(CHART), "--namespace", NS]
    cmd += ["--dry-run=server"]
    for s in sets:
        cmd += ["--set", s]
    assert os.environ.get("KUBECONFIG")
    proc = await asyncio.to_thread(run, cmd, None, check)
    if not check:
        return proc
    return load_docs(proc.stdout)


async def peering(
    cluster: Cluster, kind: str, name: str, owner: tuple[str, str], ns: str = ""
) -> None:
    plural = "clusterkopfpeerings" if kind == "ClusterKopfPeering" else "kopfpeerings"
    meta: dict[str, Any] = {
        "name": name,
        "labels": {"app.kubernetes.io/part-of": "clarion"},
        "annotations": {
            "meta.helm.sh/release-namespace": owner[0],
            "meta.helm.sh/release-name": owner[1],
        },
    }
    path = f"/apis/kopf.dev/v1/{plural}"
    if ns:
        meta["namespace"] = ns
        path = f"/apis/kopf.dev/v1/namespaces/{ns}/{plural}"
    r = await cluster.http.post(
        path, json={"apiVersion": "kopf.dev/v1", "kind": kind, "metadata": meta}
    )
    assert r.status_code < 300, r.text


async def test_an_upgrade_keeps_the_live_credentials_and_their_checksum(cluster: Cluster) -> None:
    kept = {"apiKeys": "kept-key", "jwtSecret": "kept-jwt", "adminToken": "kept-admin"}
    secret = {"apiVersion": "v1", "kind": "Secret"}
    await cluster.create(
        "v1/secrets",
        {
            **secret,
            "metadata": {"name": f"{RELEASE}-auth"},
            "data": {k: _b64(v) for k, v in kept.items()},
        },
    )
    await cluster.create(
        "v1/secrets",
        {
            **secret,
            "metadata": {"name": f"{RELEASE}-rabbitmq"},
            "data": {"password": _b64("kept-pw")},
        },
    )
    docs = await render_live()
    auth = one(docs, "Secret", f"{RELEASE}-auth")["data"]
    assert {k: base64.b64decode(v).decode() for k, v in auth.items()} == kept
    rabbit = one(docs, "Secret", f"{RELEASE}-rabbitmq")["data"]
    assert ":kept-pw@" in base64.b64decode(rabbit["url"]).decode()
    # The pods' checksum is computed from the same (kept) values: an upgrade that
    # changes nothing rolls nothing.
    given = await render_live(
        [
            "auth.apiKey.value=kept-key",
            "auth.jwtSecret.value=kept-jwt",
            "auth.adminToken.value=kept-admin",
            "rabbitmq.password=kept-pw",
        ]
    )
    checksum = [
        one(d, "WebSocketGateway")["spec"]["podAnnotations"]["checksum/credentials"]
        for d in (docs, given)
    ]
    assert checksum[0] == checksum[1]


async def test_a_second_cluster_wide_release_is_refused(cluster: Cluster) -> None:
    await peering(cluster, "ClusterKopfPeering", "clarion", ("ops", "first"))
    proc = await render_live(check=False)
    assert proc.returncode != 0
    assert "release ops/first watches all namespaces already" in proc.stderr
    # A namespaced release next to it: the cluster-wide operator would act on its gateways.
    proc = await render_live(["operator.watchNamespace=" + NS], check=False)
    assert proc.returncode != 0 and "its operator would act on this release's gateways" in (
        proc.stderr
    )


async def test_the_release_that_owns_the_peering_upgrades(cluster: Cluster) -> None:
    await peering(cluster, "ClusterKopfPeering", "clarion", (NS, RELEASE))
    docs = await render_live()
    assert find(docs, "ClusterKopfPeering")


async def test_a_cluster_wide_release_next_to_a_namespaced_one_is_refused(cluster: Cluster) -> None:
    await peering(cluster, "KopfPeering", "push", ("team-a", "push"), ns="team-a")
    proc = await render_live(check=False)
    assert proc.returncode != 0
    assert "release team-a/push runs a Clarion operator for namespace team-a" in proc.stderr
    # Another namespaced release is fine: each watches its own namespace.
    assert one(await render_live(["operator.watchNamespace=" + NS]), "KopfPeering")


async def test_an_upgrade_of_a_cluster_keeps_its_erlang_cookie(cluster: Cluster) -> None:
    # A new cookie would lock every node out of the others: it must survive upgrades.
    await cluster.create(
        "v1/secrets",
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": f"{RELEASE}-rabbitmq"},
            "data": {"password": _b64("kept-pw"), "erlangCookie": _b64("keptcookie")},
        },
    )
    sets = ["rabbitmq.replicas=3"]
    docs = await render_live(sets)
    rabbit = one(docs, "Secret", f"{RELEASE}-rabbitmq")["data"]
    assert base64.b64decode(rabbit["erlangCookie"]).decode() == "keptcookie"
    given = await render_live(
        [*sets, "rabbitmq.password=kept-pw", "rabbitmq.erlangCookie=keptcookie"]
    )
    checksum = [
        one(d, "StatefulSet")["spec"]["template"]["metadata"]["annotations"]["checksum/credentials"]
        for d in (docs, given)
    ]
    assert checksum[0] == checksum[1]
