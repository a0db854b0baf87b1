"""The operator asks the API server for gateway objects only (issue 23, item 11).

kopf filters a handler's ``labels=`` on its own side after the events arrive: on a
large cluster every Pod, Service and Deployment event would reach an operator limited
to 256 Mi. The emulator (like KMock) does not have to honour a selector for this test:
what matters is that every list and watch of those kinds carries one.
"""

from __future__ import annotations

import kmock
import pytest

from clarion import names
from tests.support import wait_for

from .conftest import Cluster, running_operator

pytestmark = pytest.mark.timeout(60)

FILTERED = ("pods", "services", "deployments")


async def test_every_watch_of_pods_services_and_deployments_asks_for_gateway_labels(
    cluster: Cluster, metrics_port: int
) -> None:
    start = len(cluster.requests())
    async with running_operator(cluster):
        for plural in FILTERED:
            await wait_for(lambda p=plural: cluster.watching(p, start), 20, message=plural)  # type: ignore[misc]
        asked = [
            r
            for r in cluster.requests()[start:]
            if r.method == kmock.method.GET
            and r.resource is not None
            and r.resource.plural in FILTERED
            and not r.name
            and not str(r.headers.get("User-Agent", "")).startswith("python-httpx")
        ]
    assert {r.resource.plural for r in asked if r.resource} == set(FILTERED)
    for r in asked:
        selector = str(r.params.get("labelSelector") or "")
        assert names.LABEL_GATEWAY in selector.split(","), (r.resource, dict(r.params))
