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

from clarion.transport import KEPT_BY, KeptFlagTransport, websocket_protocol

from .support import GatewayProcess, InProcessPod, PodFactory, wait_for
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


#: Every method of uvicorn's ``WebSocketsSansIOProtocol`` (0.52.1 to 0.55), read for
#: where what ``transport.frames_ok_now`` reads (handshake_complete, close_sent,
#: disconnected, writable, websockets' state) changes. Those called from outside the
#: class are ``transport.KEPT_BY``, after which Clarion's protocol updates the flag its
#: fast transport reads; the others run inside those (handle_*, send_500_response) or
#: change none of it (connection_made, receive, the keepalive timers' scheduling).
REVIEWED = {
    "__init__",
    "connection_lost",
    "connection_made",
    "data_received",
    "eof_received",
    "handle_bytes",
    "handle_close",
    "handle_connect",
    "handle_cont",
    "handle_events",
    "handle_handshake_exception",
    "handle_parser_exception",
    "handle_ping",
    "handle_pong",
    "handle_text",
    "keepalive_timeout",
    "on_task_complete",
    "pause_writing",
    "receive",
    "resume_writing",
    "run_asgi",
    "schedule_ping",
    "send",
    "send_500_response",
    "send_keepalive_ping",
    "send_receive_event_to_app",
    "shutdown",
    "start_keepalive",
    "stop_keepalive",
}


def test_every_method_of_uvicorns_protocol_was_reviewed_for_the_kept_flag() -> None:
    """A uvicorn with a method not in REVIEWED may change the socket's state where
    Clarion's protocol does not update the flag: read it, then extend KEPT_BY or REVIEWED."""
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

    methods = {k for k, v in vars(WebSocketsSansIOProtocol).items() if callable(v)}
    assert methods <= REVIEWED, sorted(methods - REVIEWED)
    ours = websocket_protocol()
    assert isinstance(ours, type)
    assert [m for m in KEPT_BY if m not in vars(ours)] == []


async def test_a_pods_sockets_write_through_the_kept_flag() -> None:
    """Clarion's own uvicorn settings (server.uvicorn_config) and app: each socket's writer
    has the transport that reads the flag the protocol keeps, and it is kept."""
    async with InProcessPod(auth="none", api_key="k") as pod:
        client = await Client.connect(f"{pod.ws_url}?user=u1", "c1")
        try:
            await client.wait_welcome()
            (conn,) = pod.gateway.hub.connections.values()
            t = conn.writer.transport
            assert isinstance(t, KeptFlagTransport) and t.ok
            protos = list(pod._server.server_state.connections)  # HTTP ones too
            sinks = [getattr(p, "frames_sink", None) for p in protos]
            assert [s for s in sinks if s is not None] == [t]
            async with httpx.AsyncClient(headers={"Authorization": "Bearer k"}) as http:
                r = await http.post(
                    f"{pod.http_url}/api/publish", json={"broadcast": True, "data": 1}, timeout=10
                )
            assert r.status_code == 202
            await client.wait_data(1)
            assert pod.metric("clarion_socket_writes_total", {"path": "frame"}) >= 1
        finally:
            await client.close()
        await wait_for(lambda: not t.ok, 10, message="the flag cleared when the client left")
