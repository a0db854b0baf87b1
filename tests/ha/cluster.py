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

from tests.private_broker import RABBIT_BIN, _accepts, _epmd_names, _free_ports, _pid_alive

log = logging.getLogger("tests.ha")

#: Seconds; the Erlang distribution's failure detector (RabbitMQ's default is 60).
#: A frozen node is declared down after 0.75-1.25 of it.
NET_TICKTIME = 4


def beam_pids(node_names: set[str]) -> dict[str, int]:
    """The running Erlang VMs of these nodes, by node name (from their environment)."""
    found: dict[str, int] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            exe = (proc / "cmdline").read_bytes().split(b"\0", 1)[0]
            env = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if not exe.endswith((b"beam.smp", b"beam")):
            continue
        for item in env:
            if item.startswith(b"RABBITMQ_NODENAME="):
                name = item.split(b"=", 1)[1].decode()
                if name in node_names and _pid_alive(int(proc.name)):
                    found[name] = int(proc.name)
    return found


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


class Node:
    """One node of the cluster: its name, ports and directories."""

    def __init__(self, cluster: HaCluster, index: int) -> None:
        self.cluster = cluster
        self.index = index
        self.name = f"clarion-ha{index}-{cluster.tag}@localhost"
        self.amqp_port, self.mgmt_port, self.dist_port, self.ctl_port = _free_ports(4)
        self.dir = cluster.dir / f"n{index}"
        for sub in ("mnesia", "log"):
            (self.dir / sub).mkdir(parents=True)
        (self.dir / "enabled_plugins").write_text("[rabbitmq_management].\n")
        conf = [
            f"listeners.tcp.1 = 127.0.0.1:{self.amqp_port}",
            f"management.tcp.port = {self.mgmt_port}",
            "management.tcp.ip = 127.0.0.1",
            "loopback_users = none",
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
        (self.dir / "rabbitmq.conf").write_text("\n".join(conf) + "\n")
        (self.dir / "rabbitmq-env.conf").write_text("")  # not /etc/rabbitmq's

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/"

    @property
    def mgmt_url(self) -> str:
        return f"http://127.0.0.1:{self.mgmt_port}"

    @property
    def pid(self) -> int | None:
        return beam_pids({self.name}).get(self.name)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            HOME=str(self.cluster.home),  # one ~/.erlang.cookie for nodes and CLI
            ERL_EPMD_PORT=str(self.cluster.epmd_port),
            ERL_EPMD_ADDRESS="127.0.0.1",
            RABBITMQ_NODENAME=self.name,
            RABBITMQ_NODE_PORT=str(self.amqp_port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_CTL_DIST_PORT_MIN=str(self.ctl_port),
            RABBITMQ_CTL_DIST_PORT_MAX=str(self.ctl_port + 9),
            RABBITMQ_MNESIA_BASE=str(self.dir / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.dir / "log"),
            RABBITMQ_PID_FILE=str(self.dir / "rabbit.pid"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.dir / "enabled_plugins"),
            RABBITMQ_CONFIG_FILE=str(self.dir / "rabbitmq.conf"),
            RABBITMQ_CONF_ENV_FILE=str(self.dir / "rabbitmq-env.conf"),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
        )
        return env

    def launch(self) -> None:
        short = self.name.split("@")[0]
        deadline = time.monotonic() + 15
        while short in _epmd_names(self.cluster.epmd_port) and time.monotonic() < deadline:
            time.sleep(0.1)
        with open(self.dir / "startup.log", "ab") as out:
            subprocess.run(
                [str(RABBIT_BIN / "rabbitmq-server"), "-detached"],
                env=self.env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=30,
                check=False,
            )

    def up(self) -> bool:
        if not _accepts(self.amqp_port):
            return False
        try:
            r = httpx.get(f"{self.mgmt_url}/api/overview", auth=("guest", "guest"), timeout=2)
        except httpx.HTTPError:
            return False
        return r.status_code == 200

    def wait_up(self, timeout: float = 40.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.up():
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{self.name} did not start in {timeout:.0f}s:\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL the node's VM (a crash) and wait until it is gone."""
        pid = self.pid
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.01)

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

    def log_tail(self, chars: int = 3000) -> str:
        text = "".join(
            p.read_text(errors="replace") for p in sorted((self.dir / "log").glob("*.log"))
        )
        return text[-chars:]


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
