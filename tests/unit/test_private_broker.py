"""The ports of a private RabbitMQ node (tests/private_broker.py), with no node booted.

A node restarted by a fault test binds the same ports again. While it was down, any
process on the machine could be handed one of them as the source port of an outgoing
connection if it lay in the kernel's ephemeral range; the new node then failed to
listen (``eaddrinuse``), died while booting, three times, and the test failed after
60 s (seen in test_soak on a loaded machine).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from tests.private_broker import CLI_PORTS, PrivateBroker, _ephemeral_range, _free_ports

pytestmark = pytest.mark.timeout(30)


def test_the_kernels_ephemeral_range_is_read() -> None:
    low, high = _ephemeral_range()
    assert 1024 <= low < high <= 65535


def test_no_port_of_a_node_or_of_its_cli_is_one_the_kernel_hands_out() -> None:
    low, _ = _ephemeral_range()
    ports = [p for _ in range(50) for p in _free_ports(4)]
    assert all(1024 < p and p + CLI_PORTS < low for p in ports), sorted(ports)[-5:]
    # ... and they are distinct within one node.
    assert all(len(set(_free_ports(4))) == 4 for _ in range(50))


@pytest.fixture
def holder() -> Iterator[socket.socket]:
    """A listener for a held connection to talk to."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server


def test_a_port_held_by_another_socket_fails_the_start_at_once_and_names_it(
    holder: socket.socket,
) -> None:
    broker = PrivateBroker()
    try:
        # An outgoing connection whose source port is the node's AMQP port.
        with socket.socket() as held:
            held.bind(("127.0.0.1", broker.amqp_port))
            held.connect(holder.getsockname())
            t0 = time.monotonic()
            with pytest.raises(RuntimeError, match=f"{broker.amqp_port} \\(amqp\\)"):
                broker.start(timeout=1.0)
            assert time.monotonic() - t0 < 5
        assert not broker.running  # no node was launched
    finally:
        broker.close()
