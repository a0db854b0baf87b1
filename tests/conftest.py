from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from clarion.config import option

from .support import MGMT_AUTH, MGMT_URL, Vhost

#: Both delivery designs (``--routing``): fault, recovery and soak tests run in each.
ROUTINGS = option("routing").choices


@pytest.fixture(scope="session")
def rabbit_mgmt() -> str:
    """The management API of the shared RabbitMQ; the suite needs it (.ci/run starts it)."""
    try:
        httpx.get(f"{MGMT_URL}/api/overview", auth=MGMT_AUTH, timeout=5).raise_for_status()
    except httpx.HTTPError as exc:
        pytest.fail(
            f"RabbitMQ management API not reachable at {MGMT_URL}: {exc} "
            "(run .ci/run or `make services`)"
        )
    return MGMT_URL


@pytest.fixture
def vhost(rabbit_mgmt: str) -> Iterator[Vhost]:
    """A fresh vhost for one test: its own exchange and queues on the shared broker."""
    v = Vhost().create()
    yield v
    v.delete()


@pytest.fixture(scope="module")
def module_vhost(rabbit_mgmt: str) -> Iterator[Vhost]:
    v = Vhost().create()
    yield v
    v.delete()


@pytest.fixture(scope="module", params=ROUTINGS)
def routing(request: pytest.FixtureRequest) -> str:
    """``--routing`` of the pods a test starts: every test using it runs in both modes."""
    return str(request.param)
