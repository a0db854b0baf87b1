"""A three-node RabbitMQ cluster of the test's own, on one machine.

The shared broker (127.0.0.1:5672) and its node are never touched: the nodes
here register with their own epmd (its own port), listen on their own loopback
ports, keep their data under one temp directory and carry unique node names.
Node 1 boots alone; nodes 2 and 3 join it through ``classic_config`` peer
discovery (about 10 s for the three on the project's 2-core machine).

Nothing can outlive the test run: ``close()`` kills every node's Erlang VM
(found by ``RABBITMQ_NODENAME`` in ``/proc/*/environ``, since pid files go
stale after a SIGKILL) and the epmd, and a watchdog process does the same if
the pytest process dies without running its finalizers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from tests.private_broker import RabbitNode, _free_ports, beam_pids

log = logging.getLogger("tests.ha")

#: Seconds; the Erlang distribution's failure detector (RabbitMQ's default is 60).
#: A frozen node is declared down after 0.75-1.25 of it.
NET_TICKTIME = 4


def kill_nodes(node_names: set[str], epmd_port: int | None) -> None:
    """SIGKILL these nodes' VMs (SIGCONT first, in case one is frozen) and their epmd."""
    for pid in beam_pids(node_names).values():
        for sig in (signal.SIGCONT, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
    if epmd_port is None:
        return
    ours = f"epmd\0-daemon\0-port\0{epmd_port}\0".encode()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if (proc / "cmdline").read_bytes() == ours:
                    os.kill(int(proc.name), signal.SIGKILL)
            except (OSError, ProcessLookupError):
                continue


_WATCHDOG = """
import os, sys, time
sys.path.insert(0, {root!r})
from tests.ha.cluster import kill_nodes
parent, port, names = int(sys.argv[1]), int(sys.argv[2]), set(sys.argv[3:])
while True:
    try:
        os.kill(parent, 0)
    except ProcessLookupError:
        break
    time.sleep(1)
kill_nodes(names, port)
"""


class Node(RabbitNode):
    """One node of the cluster (``tests/private_broker.RabbitNode``): the cluster's cookie
    and epmd, CLI ports of its own, a short failure detector; nodes 2 and 3 join node 1."""

    def __init__(self, cluster: HaCluster, index: int) -> None:
        self.cluster = cluster
        self.index = index
        conf = [
            f"net_ticktime = {NET_TICKTIME}",
            # What the RabbitMQ Cluster Operator sets: a node cut off from
            # the majority stops serving instead of splitting the cluster.
            "cluster_partition_handling = autoheal",
            "collect_statistics_interval = 1000",
        ]
        if index > 1:
            conf += [
                "cluster_formation.peer_discovery_backend = classic_config",
                f"cluster_formation.classic_config.nodes.1 = {cluster.nodes[0].name}",
            ]
        super().__init__(
            f"clarion-ha{index}-{cluster.tag}@localhost",
            cluster.dir / f"n{index}",
            cluster.home,  # one ~/.erlang.cookie for nodes and CLI
            conf,
            epmd_port=cluster.epmd_port,
        )
        (self.ctl_port,) = _free_ports(1)

    @property
    def url(self) -> str:
        return self.amqp_url

    @property
    def pid(self) -> int | None:
        return self.find_pid()

    def env(self) -> dict[str, str]:
        env = super().env()
        env.update(
            RABBITMQ_CTL_DIST_PORT_MIN=str(self.ctl_port),
            RABBITMQ_CTL_DIST_PORT_MAX=str(self.ctl_port + 9),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
        )
        return env

    def wait_up(self, timeout: float = 40.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.up():
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{self.name} did not start in {timeout:.0f}s:\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def freeze(self) -> None:
        pid = self.pid
        assert pid is not None, f"{self.name} is not running"
        os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        pid = self.pid
        if pid is not None:
            os.kill(pid, signal.SIGCONT)

    def restart(self, timeout: float = 40.0) -> None:
        self.kill()
        self.launch()
        self.wait_up(timeout)


class HaCluster:
    """Three RabbitMQ nodes clustered on loopback ports of their own."""

    def __init__(self, base_dir: Path | None = None, size: int = 3) -> None:
        self.tag = uuid.uuid4().hex[:8]
        self.dir = Path(tempfile.mkdtemp(prefix="clarion-ha-", dir=base_dir))
        self.home = self.dir / "home"
        self.home.mkdir()
        cookie = self.home / ".erlang.cookie"
        cookie.write_text(uuid.uuid4().hex.upper())
        cookie.chmod(0o400)
        (self.epmd_port,) = _free_ports(1)
        self.nodes: list[Node] = []
        for i in range(1, size + 1):
            self.nodes.append(Node(self, i))
        self._watchdog: subprocess.Popen[bytes] | None = None
        self.boot_seconds = 0.0

    @property
    def names(self) -> set[str]:
        return {n.name for n in self.nodes}

    @property
    def urls(self) -> str:
        """Every node's AMQP URL, comma-separated (the gateway's ``--amqp-url``)."""
        return ",".join(n.url for n in self.nodes)

    def node_named(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def node_on_port(self, port: int) -> Node:
        return next(n for n in self.nodes if n.amqp_port == port)

    def start(self) -> HaCluster:
        t0 = time.monotonic()
        self._watchdog = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _WATCHDOG.format(root=str(Path(__file__).resolve().parents[2])),
                str(os.getpid()),
                str(self.epmd_port),
                *self.names,
            ],
            start_new_session=True,
        )
        subprocess.run(
            ["epmd", "-daemon", "-port", str(self.epmd_port)],
            env={**os.environ, "ERL_EPMD_ADDRESS": "127.0.0.1"},
            check=True,
            timeout=10,
        )
        first, *rest = self.nodes
        first.launch()
        first.wait_up()
        for n in rest:
            n.launch()
        for n in rest:
            n.wait_up()
        self.wait_running(len(self.nodes))
        self.boot_seconds = time.monotonic() - t0
        log.info("3-node RabbitMQ cluster up in %.1fs", self.boot_seconds)
        return self

    def mgmt(self, path: str, timeout: float = 3.0) -> object:
        """GET a management API path from the first node that answers."""
        last: Exception | None = None
        for n in self.nodes:
            try:
                r = httpx.get(f"{n.mgmt_url}{path}", auth=("guest", "guest"), timeout=timeout)
                r.raise_for_status()
                return r.json()
            except httpx.HTTPError as exc:
                last = exc
        raise RuntimeError(f"no node answered {path}: {last}")

    def running_nodes(self) -> set[str]:
        nodes = self.mgmt("/api/nodes")
        assert isinstance(nodes, list)
        return {n["name"] for n in nodes if n.get("running")}

    def wait_running(self, count: int, timeout: float = 40.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if len(self.running_nodes()) >= count:
                    return
            except RuntimeError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"fewer than {count} nodes running after {timeout:.0f}s")
            time.sleep(0.2)

    def close(self) -> None:
        try:
            kill_nodes(self.names, self.epmd_port)
        finally:
            if self._watchdog is not None:
                self._watchdog.kill()
                self._watchdog.wait(5)
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> HaCluster:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()
