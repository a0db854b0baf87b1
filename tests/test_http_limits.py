"""A request too large for the WebSocket handshake gets an answer and a closed socket at once.

websockets (under uvicorn's websockets-sansio) refuses a request line over 8 KiB
with 414 and header lines over 8 KiB (or too many headers) with 431, but
uvicorn never wrote that answer: the client waited 45 s and more on an open
socket. A 93 KB URL is what a browser sends with a JWT whose ``sub`` has
70,000 characters.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator

import pytest

from testkit.websocket import upgrade_request

from .support import InProcessPod

pytestmark = pytest.mark.timeout(60)

KEY = "dGhlIHNhbXBsZSBub25jZQ=="


@pytest.fixture(scope="module")
def pod() -> Iterator[InProcessPod]:
    with InProcessPod(f"limits-{uuid.uuid4().hex[:6]}", auth="none") as p:
        yield p


def exchange(pod: InProcessPod, request: bytes, timeout: float = 5.0) -> tuple[bytes, float]:
    """Send ``request``; everything the server answers until it closes, and how long that took."""
    started = time.monotonic()
    with socket.create_connection((pod.host, pod.port), timeout=timeout) as s:
        s.sendall(request)
        data = b""
        while True:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                raise AssertionError(f"no close after {timeout}s; got {data[:200]!r}") from None
            if not chunk:
                return data, time.monotonic() - started
            data += chunk


def upgrade(path: str, extra: str = "") -> bytes:
    return upgrade_request("x", path, key=KEY, extra=extra)


@pytest.mark.parametrize("size", [8_300, 20_000, 93_000])
def test_an_oversized_url_gets_414_and_the_socket_closes(pod: InProcessPod, size: int) -> None:
    data, took = exchange(pod, upgrade("/ws?token=" + "a" * size))
    assert data.startswith(b"HTTP/1.1 414"), data[:200]
    assert took < 3


@pytest.mark.parametrize(
    "extra",
    [
        "X-Big: " + "b" * 9_000 + "\r\n",  # one header line too long
        "".join(f"X-H{i}: v\r\n" for i in range(300)),  # too many headers
    ],
    ids=["long-header", "many-headers"],
)
def test_oversized_headers_get_431_and_the_socket_closes(pod: InProcessPod, extra: str) -> None:
    data, took = exchange(pod, upgrade("/ws?user=u", extra))
    assert data.startswith(b"HTTP/1.1 431"), data[:200]
    assert took < 3


def test_just_under_the_limit_still_connects(pod: InProcessPod) -> None:
    request = upgrade("/ws?user=" + "u" * 200)
    with socket.create_connection((pod.host, pod.port), timeout=5) as s:
        s.sendall(request)
        assert s.recv(4096).startswith(b"HTTP/1.1 101")


def test_the_pod_serves_others_after_oversized_requests(pod: InProcessPod) -> None:
    for _ in range(5):
        exchange(pod, upgrade("/ws?token=" + "a" * 50_000))
    data, _ = exchange(pod, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200")
