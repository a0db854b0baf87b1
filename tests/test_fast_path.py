"""The uvicorn fast path (transport.py) is the one a real pod uses.

It reaches into uvicorn's private websockets-sansio protocol; an upgrade that
renamed what it reads would silently drop every socket to the slow path.
These tests run a real ``clarion serve`` process and fail if it does.
"""

from __future__ import annotations

import asyncio
import importlib.metadata

import httpx
import pytest
from packaging.requirements import Requirement

from .support import GatewayProcess, PodFactory, wait_for
from .wsclient import Client

pytestmark = pytest.mark.timeout(60)


#: The packages whose private parts a fast path reads, and where.
SEAMS = {"uvicorn": "transport.py", "aiormq": "broker/fastconsume.py"}


@pytest.mark.parametrize("package", sorted(SEAMS))
def test_the_installed_version_is_one_the_fast_path_was_tested_with(package: str) -> None:
    """The range is clarion's declared dependency (pyproject.toml, read from the installed
    metadata); a version outside it has not been run through these tests."""
    declared = [
        req
        for raw in importlib.metadata.requires("clarion") or []
        if (req := Requirement(raw)).name == package and req.marker is None
    ]
    assert len(declared) == 1, f"clarion declares no single requirement on {package}"
    spec = declared[0].specifier
    assert any(s.operator in ("<", "<=", "==", "~=") for s in spec), (
        f"{package}{spec} has no ceiling: {SEAMS[package]} reads its private parts, so only "
        "the versions it was tested with may be installed"
    )
    installed = importlib.metadata.version(package)
    assert spec.contains(installed, prereleases=True), (
        f"{package} {installed} is installed but {SEAMS[package]}'s fast path was tested with "
        f"{package}{spec} only (pyproject.toml): run tests/test_fast_path.py and "
        "tests/test_fast_consume.py on it, then widen the range"
    )


SOCKETS = 5
MESSAGES = 20


@pytest.fixture(params=[False, True], ids=["plain", "compression"])
def pod(request: pytest.FixtureRequest, pod_factory: PodFactory) -> GatewayProcess:
    args = ["--auth", "none", "--api-key", "k"]
    if request.param:
        args.append("--compression")
    (p,) = pod_factory(1, "fast", args=args)
    return p


async def test_a_real_uvicorn_pod_writes_through_the_fast_path(pod: GatewayProcess) -> None:
    compression = "--compression" in pod.args
    clients = [
        await Client.connect(
            f"{pod.ws_url}?user=u{i}", f"c{i}", compression="deflate" if compression else None
        )
        for i in range(SOCKETS)
    ]
    for c in clients:
        await c.wait_welcome()
    async with httpx.AsyncClient(headers={"Authorization": "Bearer k"}) as http:
        for i in range(MESSAGES):
            r = await http.post(
                f"{pod.http_url}/api/publish", json={"broadcast": True, "data": i}, timeout=10
            )
            assert r.status_code == 202
    for c in clients:
        await wait_for(lambda c=c: len(c.messages) == MESSAGES, 10, message="all messages")
        assert c.data() == list(range(MESSAGES))
    frame = pod.metric("clarion_socket_writes_total", {"path": "frame"})
    direct = pod.metric("clarion_socket_writes_total", {"path": "direct"})
    awaited = pod.metric("clarion_socket_writes_total", {"path": "asgi"})
    deliveries = SOCKETS * MESSAGES
    if compression:
        # Pre-built frames are uncompressed: every write goes through uvicorn's send,
        # completed without a task while the socket keeps up.
        assert frame == 0
        assert direct + awaited >= deliveries + SOCKETS and direct > awaited
    else:
        assert frame >= deliveries, (frame, direct, awaited)
        assert awaited <= SOCKETS  # at most the odd send that had to wait
    for c in clients:
        await c.close()
    await asyncio.sleep(0)
