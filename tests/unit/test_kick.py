"""kick.py: the disconnect API's command, published to the user's pods and run on each.

A real hub with connections on a fake transport (tests/test_hub.py's); the command goes
through a list instead of a broker. tests/test_disconnect.py runs it across real pods.
"""

from __future__ import annotations

import orjson
import pytest

from clarion import disconnects
from clarion.hub import Connection, ConnectionState, Hub
from clarion.kick import DISCONNECT, Kick
from clarion.message import COMMANDS, Envelope, Target
from clarion.metrics import Metrics
from tests.test_hub import FakeTransport, connection, wait_until

pytestmark = pytest.mark.timeout(10)


class Pod:
    """One pod's hub with sockets of u1 (two) and u2 (one), and what its Kick published."""

    def __init__(self) -> None:
        self.metrics = Metrics()
        self.hub = Hub(self.metrics, "p")
        self.published: list[Envelope] = []
        self.transports: dict[str, FakeTransport] = {}
        self.conns: dict[str, Connection] = {}
        for conn_id, user in (("a", "u1"), ("b", "u1"), ("c", "u2")):
            self.transports[conn_id] = FakeTransport()
            self.conns[conn_id] = connection(conn_id, user, self.transports[conn_id], self.metrics)
            self.hub.add(self.conns[conn_id])

        async def publish(env: Envelope) -> None:
            self.published.append(env)

        self.kick = Kick(self.hub, "p", publish)

    def closed(self) -> dict[str, tuple[int, str]]:
        return {c: t.closes[0] for c, t in self.transports.items() if t.closes}

    async def stop(self) -> None:
        for conn in self.conns.values():
            await conn.stop()


async def test_a_request_is_a_command_to_the_users_pods() -> None:
    pod = Pod()
    mid = await pod.kick.request("u1", 4000, "moved", None)
    (env,) = pod.published
    assert env.id == mid and env.command == DISCONNECT and DISCONNECT in COMMANDS
    # Addressed to the user: with --routing direct only the pods holding u1 receive it.
    assert env.target == Target("user", "u1")
    assert orjson.loads(env.body) == {"code": 4000, "reason": "moved", "conn": None}
    assert pod.closed() == {}  # nothing closes until the command comes back
    await pod.stop()


async def test_the_command_closes_every_socket_of_the_user_and_no_other() -> None:
    pod = Pod()
    await pod.kick.request("u1", None, None, None)
    assert pod.kick.on_command(pod.published[0]) == 2
    await wait_until(lambda: len(pod.closed()) == 2)
    how = disconnects.DISCONNECTED
    assert pod.closed() == {"a": (how.code, how.reason), "b": (how.code, how.reason)}
    assert pod.conns["c"].state is not ConnectionState.CLOSED
    await pod.stop()


@pytest.mark.parametrize(
    ("code", "reason", "closed"),
    [
        (4000, "moved", (4000, "moved")),  # the backend's code: the client reconnects
        (None, "banned", (disconnects.DISCONNECTED.code, "banned")),
        (4501, "", (4501, disconnects.DISCONNECTED.reason)),  # an empty reason: the default
        (None, "r" * 200, (disconnects.DISCONNECTED.code, "r" * 120)),  # cut to fit a frame
    ],
)
async def test_the_code_and_reason_are_the_backends(
    code: int | None, reason: str, closed: tuple[int, str]
) -> None:
    pod = Pod()
    await pod.kick.request("u2", code, reason, None)
    assert pod.kick.on_command(pod.published[0]) == 1
    await wait_until(lambda: pod.closed())
    assert pod.closed() == {"c": closed}
    await pod.stop()


async def test_one_connection_of_the_user() -> None:
    pod = Pod()
    await pod.kick.request("u1", None, None, "b")
    assert pod.kick.on_command(pod.published[0]) == 1
    await wait_until(lambda: pod.closed())
    assert list(pod.closed()) == ["b"]
    await pod.stop()


@pytest.mark.parametrize(("user", "conn"), [("nobody", None), ("u1", "c"), ("u1", "zz")])
async def test_a_user_or_connection_this_pod_does_not_hold_closes_nothing(
    user: str, conn: str | None
) -> None:
    """Another pod holds them (or nobody does): this pod has nothing to do."""
    pod = Pod()
    await pod.kick.request(user, None, None, conn)
    assert pod.kick.on_command(pod.published[0]) == 0
    assert pod.closed() == {} and len(pod.hub.connections) == 3
    await pod.stop()
