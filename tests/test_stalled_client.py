"""A client that stops reading is cut off for good, even when its close frame cannot go out.

A socket whose send buffer overflows is closed with 1013. When the client has
stopped reading altogether, the close frame sits behind the unread data, so
after a bounded wait the server aborts the connection (a TCP reset): a browser
then sees the socket fail at once instead of showing "connected" on a
half-closed connection until its own ping times out.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from testkit.websocket import upgrade_request

from .support import InProcessPod, wait_for_sync

pytestmark = pytest.mark.timeout(40)

#: Linux's TCP_CLOSE: the state of a socket that took a reset.
TCP_CLOSE = 7


def tcp_state(s: socket.socket) -> int:
    """The kernel's state of a TCP socket (the first byte of its ``struct tcp_info``)."""
    return s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]


@pytest.fixture
def pod() -> Iterator[InProcessPod]:
    with InProcessPod(
        auth="none", api_keys=["k"], send_buffer_messages=5, send_buffer_bytes=1 << 20
    ) as p:
        yield p


def test_a_client_that_never_reads_again_is_reset(pod: InProcessPod) -> None:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills after a few frames
    s.connect((pod.host, pod.port))
    s.sendall(upgrade_request(f"{pod.host}:{pod.port}", "/ws?user=stalled"))
    s.settimeout(5)
    head = s.recv(4096)
    assert head.startswith(b"HTTP/1.1 101"), head
    wait_for_sync(lambda: pod.gateway.hub.connections, 5, message="registered")
    # The client reads nothing from now on. 64 KiB broadcasts fill both kernels' buffers,
    # then the pod's send buffer (5 messages) overflows.
    with httpx.Client(headers={"Authorization": "Bearer k"}, timeout=10) as http:
        for _ in range(60):
            r = http.post(
                f"{pod.http_url}/api/publish", json={"broadcast": True, "data": "x" * 65536}
            )
            assert r.status_code == 202
            if not pod.gateway.hub.connections:
                break
    assert not pod.gateway.hub.connections, "the stalled socket was never cut off"
    assert pod.metric("clarion_connections_closed_total", {"reason": "slow_client"}) == 1
    closed_at = time.monotonic()
    # Reading now would make room for the close frame: wait, without reading, until the
    # kernel has taken the server's reset (the socket is closed, its unread data kept).
    wait_for_sync(lambda: tcp_state(s) == TCP_CLOSE, 15, 0.1, message="the server's reset")
    s.settimeout(10)
    with pytest.raises(ConnectionResetError):
        while s.recv(1 << 20):  # whatever was delivered before, then the reset
            pass
    assert time.monotonic() - closed_at < 20
    s.close()
