"""What an upgrade may not change on a live in-chart broker (issue 23, items 3 and 8),
rendered with `helm template --dry-run=server` against the KMock emulator."""

from __future__ import annotations

import base64

import pytest

from tests.operator import conftest as harness
from tests.operator.conftest import Cluster

from .helpers import RELEASE, find, one
from .test_lookup import render_live

pytestmark = pytest.mark.timeout(60)

#: The emulated API server of tests/operator, with KUBECONFIG pointing at it.
cluster = harness.cluster
NAME = f"{RELEASE}-rabbitmq"


async def live_broker(cluster: Cluster, sets: list[str]) -> None:
    """Create the StatefulSet (and Secret) a release rendered with these values."""
    docs = await render_live([*sets, "rabbitmq.password=pw", "rabbitmq.erlangCookie=C"])
    for kind, resource in (("StatefulSet", "apps/v1/statefulsets"), ("Secret", "v1/secrets")):
        obj = one(docs, kind, NAME)
        obj["metadata"].pop("namespace", None)
        await cluster.create(resource, obj)


@pytest.mark.parametrize(
    ("installed", "upgrade", "error"),
    [
        (
            [],
            ["rabbitmq.replicas=3"],
            "would turn the running broker (a single node) into a cluster",
        ),
        (["rabbitmq.replicas=3"], ["rabbitmq.replicas=1"], "(a cluster) into a single node"),
        ([], ["rabbitmq.persistence.enabled=false"], "whose volume claims cannot change"),
    ],
)
async def test_an_upgrade_that_cannot_apply_is_refused_before_anything_changes(
    cluster: Cluster, installed: list[str], upgrade: list[str], error: str
) -> None:
    await live_broker(cluster, installed)
    proc = await render_live([*upgrade, "rabbitmq.password=pw"], check=False)
    assert proc.returncode != 0 and error in proc.stderr, proc.stderr


async def test_what_an_upgrade_can_change_still_renders(cluster: Cluster) -> None:
    await live_broker(cluster, ["rabbitmq.replicas=3"])
    docs = await render_live(["rabbitmq.replicas=5", "rabbitmq.password=pw"])
    assert one(docs, "StatefulSet", NAME)["spec"]["replicas"] == 5


async def test_a_new_broker_password_is_refused_until_it_is_rotated(cluster: Cluster) -> None:
    await live_broker(cluster, [])
    proc = await render_live(["rabbitmq.password=new"], check=False)
    assert proc.returncode != 0
    assert "rabbitmq.password differs from the password in Secret" in proc.stderr
    assert "rabbitmqctl change_password" in proc.stderr
    # The same password, or none (the kept one), renders.
    assert find(await render_live(["rabbitmq.password=pw"]), "StatefulSet", NAME)
    assert find(await render_live(), "StatefulSet", NAME)
    # The rotation path: the broker changed (rabbitmqctl), then the Secret, then the chart.
    new = base64.b64encode(b"new").decode()
    await cluster.patch("v1/secrets", NAME, {"data": {"password": new}})
    docs = await render_live(["rabbitmq.password=new"])
    url = base64.b64decode(one(docs, "Secret", NAME)["data"]["url"]).decode()
    assert ":new@" in url
