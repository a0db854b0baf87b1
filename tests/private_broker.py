"""A RabbitMQ node of the test's own, for tests that stop and restart a broker.

The shared broker on 127.0.0.1:5672 is used by every engineer's tests at once,
so fault tests never touch it: ``PrivateBroker`` boots a second node of the
Debian ``rabbitmq-server`` on free ports, with its node name, data, logs,
plugins file, config and Erlang cookie (``HOME``) all in one temp directory.
``stop()`` and ``start()`` keep that directory, so durable queues and
persistent messages survive a restart as they would on a real broker;
``close()`` always kills the node and removes the directory.

Timings measured on the project's 2-core machine (3.10.8): a boot to "AMQP and
management answer" takes about 6.5 s when the machine is quiet, 10-20 s with two
CPU hogs on a machine already at load 8-11 (2026-12-06); a graceful ``stop()``
about 6 s (the AMQP listener closes at once; the node then takes ~5 s to stop its
apps); ``kill()`` is instant. So fault tests share one node per module and restart
it once per test. Its ports lie below the kernel's ephemeral range
(``_free_ports``), so no other process's connection can take one while it is down.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import httpx

log = logging.getLogger("tests.private_broker")

RABBIT_BIN = Path(os.environ.get("CLARION_TEST_RABBIT_BIN", "/usr/lib/rabbitmq/bin"))


#: A node's CLI tools take distribution ports from its DIST_PORT + 10000 to + 10010.
CLI_PORTS = 10010


def _ephemeral_range() -> tuple[int, int]:
    """The kernel's range of source ports for outgoing connections (Linux's default if unknown)."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return 32768, 60999
    return low, high


def _port_is_free(port: int, *, reuse: bool = False) -> bool:
    """Whether 127.0.0.1:``port`` can be bound; ``reuse`` binds as a RabbitMQ listener does
    (SO_REUSEADDR: a closed connection's TIME_WAIT does not count, a live one does)."""
    with socket.socket() as s:
        if reuse:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_ports(count: int, low: int = 10000) -> list[int]:
    """Free, distinct loopback ports below the kernel's ephemeral range.

    A restarted node binds the same ports again. One inside the ephemeral range can
    meanwhile be handed to any process on the machine as the source port of an
    outgoing connection (a pod's AMQP connection to the shared broker lives for
    minutes); the node then cannot listen, dies while booting, and does so again on
    every relaunch. Ports below the range are only ever taken by an explicit bind.
    The node's CLI ports (up to ``CLI_PORTS`` above its own) stay below it too.
    """
    high = _ephemeral_range()[0] - CLI_PORTS
    assert high - low > 1000, f"no room below the ephemeral ports for a node: {low}..{high}"
    rng = random.Random()
    chosen: list[int] = []
    while len(chosen) < count:
        port = rng.randrange(low, high)
        if port not in chosen and _port_is_free(port) and _port_is_free(port + 10000):
            chosen.append(port)
    return chosen


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        try:
            s.connect(("127.0.0.1", port))
        except OSError:
            return False
    return True


def beam_pids(node_names: set[str]) -> dict[str, int]:
    """The running Erlang VMs of these nodes, by node name (from their environment: pid
    files go stale after a SIGKILL)."""
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


class RabbitNode:
    """One RabbitMQ node of the tests' own: its name, free loopback ports, files and VM.

    What a lone node (``PrivateBroker``) and each node of the HA tests' cluster
    (``tests/ha/cluster.py``) share. Config, data and logs live under ``dir``; ``home``
    holds the Erlang cookie the node and its CLI share; ``conf`` lines are added to
    ``rabbitmq.conf``. The node registers with the machine's epmd unless ``epmd_port``
    names one of its own.
    """

    def __init__(
        self,
        name: str,
        dir: Path,
        home: Path,
        conf: list[str] | None = None,
        *,
        epmd_port: int | None = None,
    ) -> None:
        self.name = name
        self.dir = dir
        self.home = home
        self.epmd_port = epmd_port
        self.amqp_port, self.mgmt_port, self.dist_port = _free_ports(3)
        for sub in ("mnesia", "log"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        (self.dir / "enabled_plugins").write_text("[rabbitmq_management].\n")
        lines = [
            f"listeners.tcp.1 = 127.0.0.1:{self.amqp_port}",
            f"management.tcp.port = {self.mgmt_port}",
            "management.tcp.ip = 127.0.0.1",
            "loopback_users = none",
            *(conf or []),
        ]
        (self.dir / "rabbitmq.conf").write_text("\n".join(lines) + "\n")
        (self.dir / "rabbitmq-env.conf").write_text("")  # not /etc/rabbitmq's

    @property
    def amqp_url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/"

    @property
    def mgmt_url(self) -> str:
        return f"http://127.0.0.1:{self.mgmt_port}"

    def find_pid(self) -> int | None:
        """The node's running Erlang VM."""
        return beam_pids({self.name}).get(self.name)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            HOME=str(self.home),  # the node and its CLI share this ~/.erlang.cookie
            RABBITMQ_NODENAME=self.name,
            RABBITMQ_NODE_PORT=str(self.amqp_port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(self.dir / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.dir / "log"),
            RABBITMQ_PID_FILE=str(self.dir / "rabbit.pid"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.dir / "enabled_plugins"),
            RABBITMQ_CONFIG_FILE=str(self.dir / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(self.dir / "advanced.config"),
            RABBITMQ_CONF_ENV_FILE=str(self.dir / "rabbitmq-env.conf"),
            ERL_EPMD_ADDRESS="127.0.0.1",
        )
        if self.epmd_port is not None:
            env["ERL_EPMD_PORT"] = str(self.epmd_port)
        return env

    def launch(self, epmd_timeout: float = 15.0) -> None:
        """``rabbitmq-server -detached``, once epmd no longer lists a node of this name
        (one that just stopped: the new one would refuse to start)."""
        short = self.name.split("@")[0]
        deadline = time.monotonic() + epmd_timeout
        while short in _epmd_names(self.epmd_port or 4369) and time.monotonic() < deadline:
            time.sleep(0.1)
        with contextlib.suppress(FileNotFoundError):
            (self.dir / "rabbit.pid").unlink()
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
        """AMQP and the management API answer. The AMQP listener opens last in the boot
        sequence; both are cheaper to poll than `rabbitmqctl await_startup` (a CLI VM
        per call)."""
        if not _accepts(self.amqp_port):
            return False
        try:
            r = httpx.get(f"{self.mgmt_url}/api/overview", auth=("guest", "guest"), timeout=2)
        except httpx.HTTPError:
            return False
        return r.status_code == 200

    def kill(self) -> None:
        """SIGKILL the node's VM (a crash; SIGCONT first, in case it is frozen) and wait
        until it is gone."""
        pid = self.find_pid()
        if pid is None:
            return
        for sig in (signal.SIGCONT, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        _wait_dead(pid, 10.0)

    def log_tail(self, chars: int = 3000) -> str:
        logs = sorted((self.dir / "log").glob("*.log"))
        text = "".join(p.read_text(errors="replace") for p in logs if "upgrade" not in p.name)
        startup = self.dir / "startup.log"
        boot = startup.read_text(errors="replace")[-chars // 2 :] if startup.exists() else ""
        return f"{text[-chars:]}\n-- rabbitmq-server -detached said:\n{boot}"


class PrivateBroker(RabbitNode):
    """One RabbitMQ node of the test's own on free loopback ports."""

    def __init__(self, base_dir: Path | None = None) -> None:
        root = Path(tempfile.mkdtemp(prefix="clarion-rabbit-", dir=base_dir))
        (root / "home").mkdir()
        super().__init__(f"clarion-test-{uuid.uuid4().hex[:8]}@localhost", root, root / "home")
        self.pid: int | None = None
        self.timings: dict[str, list[float]] = {"start": [], "stop": []}

    @property
    def running(self) -> bool:
        if self.pid is None:
            self.pid = self.find_pid()
        return self.pid is not None and _pid_alive(self.pid)

    def ctl(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run ``rabbitmqctl -n NODE ARGS`` against this node."""
        return subprocess.run(
            [str(RABBIT_BIN / "rabbitmqctl"), "-n", self.name, *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    # -- lifecycle -----------------------------------------------------------

    def start(self, timeout: float = 60.0) -> PrivateBroker:
        """Boot the node (same data dir as before) and wait until it takes AMQP connections.

        If the VM dies during boot (on a loaded machine epmd can still list the
        node's name for a moment after a stop, and the new node then refuses to
        start), it is launched again, up to three times within ``timeout``.
        """
        if self.running:
            return self
        t0 = time.monotonic()
        deadline = t0 + timeout
        self._wait_ports_free(deadline)
        launches = 0
        launched_at = 0.0
        next_check = 0.0
        while True:
            now = time.monotonic()
            if launches == 0 or (now >= next_check and now - launched_at > 5 and launches < 3):
                next_check = now + 1.0
                if launches == 0 or self.find_pid() is None:
                    if launches:
                        log.warning("private RabbitMQ %s died while booting: again", self.name)
                    self.launch(10.0)
                    launches += 1
                    launched_at = time.monotonic()
            if self.up():
                break
            if time.monotonic() > deadline:
                tail = self.log_tail()
                self.kill()
                raise RuntimeError(
                    f"private RabbitMQ {self.name} did not start in {timeout:.0f}s "
                    f"({launches} launches):\n{tail}"
                )
            time.sleep(0.1)
        self.pid = self.find_pid()
        self.timings["start"].append(time.monotonic() - t0)
        log.info("private RabbitMQ %s up in %.1fs", self.name, self.timings["start"][-1])
        return self

    def _wait_ports_free(self, deadline: float) -> None:
        """Wait until the node can listen on its ports; fail, naming the port, at ``deadline``.

        A node launched while another socket holds one of its ports dies while booting
        (``eaddrinuse`` in its log), and so would every relaunch.
        """
        ports = {"amqp": self.amqp_port, "management": self.mgmt_port, "dist": self.dist_port}
        while held := [f"{p} ({n})" for n, p in ports.items() if not _port_is_free(p, reuse=True)]:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"private RabbitMQ {self.name} cannot start: port {', '.join(held)} "
                    "is held by another socket (`ss -tanp` names it)"
                )
            time.sleep(0.1)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the whole node gracefully (as a broker restart would), keeping its data."""
        if not self.running:
            return
        t0 = time.monotonic()
        assert self.pid is not None
        # SIGTERM makes the Erlang VM run init:stop(): RabbitMQ's orderly
        # shutdown, the same path as `rabbitmqctl shutdown` without booting a
        # CLI VM first.
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        deadline = t0 + timeout
        while _pid_alive(self.pid):
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                break
            time.sleep(0.05)
        self.pid = None
        self.timings["stop"].append(time.monotonic() - t0)
        log.info("private RabbitMQ %s stopped in %.1fs", self.name, self.timings["stop"][-1])

    def kill(self) -> None:
        """SIGKILL the node: a crash, not a shutdown."""
        super().kill()
        self.pid = None

    def close(self) -> None:
        """Teardown: kill the node and remove its directory. No graceful stop first: its
        data is thrown away, and an orderly stop took about 6 s of every module's teardown."""
        try:
            self.kill()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PrivateBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _epmd_names(port: int = 4369) -> set[str]:
    """The node names registered with the local epmd (its NAMES_REQ)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"\x00\x01n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
    except OSError:
        return set()
    names = set()
    for line in data[4:].decode(errors="replace").splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "name":
            names.add(parts[1])
    return names


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (not reaped: the detached node is not our child) counts as dead.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _wait_dead(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
