"""The chart's RabbitMQ preStop, run against a real three-node cluster (issue 23, item 2).

The command is taken from the rendered StatefulSet (real helm) and run as the kubelet
would, in a shell on the node being stopped: it must drain that node while the other
two keep every quorum queue's quorum, and keep waiting (drain nothing) while they
would not.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import uuid
from urllib.parse import quote

import httpx
import pytest

from tests.chart.helpers import render
from tests.private_broker import RABBIT_BIN, _accepts

from .cluster import HaCluster, Node

pytestmark = pytest.mark.timeout(120)


def prestop_command() -> str:
    docs = render(["rabbitmq.replicas=3", "rabbitmq.password=p", "rabbitmq.erlangCookie=C"])
    (sts,) = [d for d in docs if d["kind"] == "StatefulSet"]
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[:2] == ["sh", "-c"]
    return str(command[2])


def start_prestop(node: Node) -> subprocess.Popen[str]:
    """The preStop in the node's own environment: the CLI talks to that node."""
    env = {**node.env(), "PATH": f"{RABBIT_BIN}:{os.environ['PATH']}"}
    return subprocess.Popen(
        ["sh", "-c", prestop_command()],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def stop(proc: subprocess.Popen[str]) -> str:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    out, _ = proc.communicate(timeout=10)
    return out


def being_drained(node: Node) -> bool:
    """A drained node has closed its client listener (so the TCP readiness probe fails)."""
    return not _accepts(node.amqp_port)


def quorum_queue(cluster: HaCluster) -> str:
    """A quorum queue with a member on each of the three nodes."""
    name = f"prestop-{uuid.uuid4().hex[:8]}"
    first = cluster.nodes[0]
    r = httpx.put(
        f"{first.mgmt_url}/api/queues/%2F/{quote(name)}",
        json={"durable": True, "arguments": {"x-queue-type": "quorum"}},
        auth=("guest", "guest"),
        timeout=10,
    )
    assert r.status_code in (201, 204), r.text
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        q = cluster.mgmt(f"/api/queues/%2F/{quote(name)}")
        if isinstance(q, dict) and len(q.get("online") or []) == 3:
            return name
        time.sleep(0.3)
    raise AssertionError(f"{name} has not three online members")


def revive(node: Node) -> None:
    env = {**node.env(), "PATH": f"{RABBIT_BIN}:{os.environ['PATH']}"}
    subprocess.run(["rabbitmq-upgrade", "-q", "revive"], env=env, timeout=60, check=True)


def test_prestop_drains_a_node_while_the_others_keep_quorum(ha_nodes_back: HaCluster) -> None:
    cluster = ha_nodes_back
    quorum_queue(cluster)
    node = cluster.nodes[2]
    proc = start_prestop(node)
    try:
        assert proc.wait(timeout=90) == 0, stop(proc)
        assert being_drained(node)
        # The management listener goes too: a TCP liveness probe on it would restart
        # a draining node (the chart has none, as the RabbitMQ cluster operator).
        assert not _accepts(node.mgmt_port)
    finally:
        stop(proc)
        revive(node)
    assert not being_drained(node)


def test_prestop_waits_while_stopping_the_node_would_lose_quorum(
    ha_nodes_back: HaCluster,
) -> None:
    cluster = ha_nodes_back
    quorum_queue(cluster)
    cluster.nodes[1].kill()
    node = cluster.nodes[2]
    proc = start_prestop(node)
    try:
        time.sleep(10)
        assert proc.poll() is None, f"the preStop did not wait:\n{stop(proc)}"
        assert not being_drained(node)
    finally:
        stop(proc)
