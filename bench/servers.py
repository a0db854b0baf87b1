"""Starting and stopping the servers under test, each in its own process.

A "system" is a set of pods of one kind on loopback ports, all on one RabbitMQ
vhost of their own (created here, deleted after), so nothing of the shared
broker's other users is touched and no queue outlives the run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from testkit import rabbitmq
from testkit.net import free_port

#: ``BENCH_RABBIT_HOST``, ``BENCH_RABBIT_PORT``, ``BENCH_MGMT_URL``.
RABBIT = rabbitmq.Rabbit.from_env("BENCH_")
HOST = "127.0.0.1"

#: How each kind of system is spoken to by the load generator.
DIALECT = {"clarion": "clarion", "sio": "sio", "raw": "raw"}
PATH = {
    "clarion": "/ws?user=u{i}",
    "sio": "/socket.io/?EIO=4&transport=websocket&user=u{i}",
    "raw": "/?user=u{i}",
}


class Vhost(rabbitmq.Vhost):
    """A RabbitMQ vhost of the bench's own."""

    rabbit = RABBIT
    prefix = "clarion-bench"


def broker_pid() -> int | None:
    """The RabbitMQ node listening on the bench's port (its CPU is reported beside the pods')."""
    with contextlib.suppress(psutil.Error):
        for c in psutil.net_connections("tcp"):
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == RABBIT.port:
                return int(c.pid) if c.pid else None
    return None


@dataclass
class Pod:
    kind: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    name: str

    @property
    def pid(self) -> int:
        return int(self.proc.pid)

    @property
    def addr(self) -> tuple[str, int]:
        return (HOST, self.port)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""


@dataclass
class System:
    """Pods of one kind, e.g. ``clarion`` x2, on their own vhost."""

    label: str
    kind: str  # clarion | sio | raw (the dialect spoken)
    pods: list[Pod] = field(default_factory=list)
    vhost: Vhost | None = None

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.pods]

    @property
    def addrs(self) -> list[tuple[str, int]]:
        return [p.addr for p in self.pods]

    @property
    def amqp_url(self) -> str:
        assert self.vhost is not None
        return self.vhost.amqp_url

    @property
    def path(self) -> str:
        return PATH[self.kind]

    @property
    def dialect(self) -> str:
        return DIALECT[self.kind]

    def stop(self) -> None:
        for p in self.pods:
            if p.alive():
                p.proc.send_signal(signal.SIGINT)
        for p in self.pods:
            try:
                p.proc.wait(8)
            except subprocess.TimeoutExpired:
                p.proc.kill()
                p.proc.wait(5)
        if self.vhost is not None:
            self.vhost.delete()


#: ``clarion serve`` with each ``--routing`` (``clarion`` alone: its default).
ROUTINGS = ("clarion+fanout", "clarion+direct")


def _cmd(label: str, port: int, name: str, amqp_url: str) -> tuple[str, list[str]]:
    """The command line of one pod of the system named ``label``.

    ``clarion``: the shipped ``clarion serve``; ``clarion+deflate``: the same
    with ``--compression``; ``clarion+fanout``, ``clarion+direct``: with that
    ``--routing``; ``clarion[ws=X]``: the bench launcher with uvicorn's
    WebSocket implementation X; ``clarion[gc]``: the launcher with a tuned GC;
    ``sio``: python-socketio; ``raw``: websockets ``broadcast()``;
    ``raw+coalesce``: one write per socket per loop iteration.
    """
    py = sys.executable
    if label in ("clarion", "clarion+deflate", *ROUTINGS) or label.startswith("clarion@"):
        cmd = [py, "-m", "clarion", "serve", "--host", HOST, "--port", str(port)]
        cmd += ["--pod-name", name, "--amqp-url", amqp_url, "--auth", "none"]
        cmd += ["--log-level", "warning", "--drain-delay", "0", "--drain-window", "0"]
        if label == "clarion+deflate":
            cmd.append("--compression")
        if label in ROUTINGS:
            cmd += ["--routing", label.split("+")[1]]
        return "clarion", cmd
    if label.startswith("clarion["):
        # clarion[ws=X] or clarion[gc]: the bench launcher with other settings.
        opts = label[len("clarion[") : -1].replace("+", ",").split(",")
        cmd = [py, "-m", "bench.clarion_pod", "--port", str(port), "--pod-name", name]
        cmd += ["--amqp-url", amqp_url]
        ws = next((o[3:] for o in opts if o.startswith("ws=")), "websockets-sansio")
        cmd += ["--ws", ws]
        if "gc" in opts:
            cmd.append("--gc")
        if "nometrics" in opts:
            cmd.append("--no-socket-metrics")
        return "clarion", cmd
    if label == "sio":
        return "sio", [py, "-m", "bench.sio_server", "--port", str(port), "--amqp-url", amqp_url]
    if label in ("raw", "raw+coalesce"):
        cmd = [py, "-m", "bench.raw_server", "--port", str(port), "--amqp-url", amqp_url]
        cmd += ["--name", name]
        return "raw", [*cmd, "--coalesce"] if label == "raw+coalesce" else cmd
    raise ValueError(f"unknown system {label!r}")


def _http_ok(port: int, path: str) -> bool:
    try:
        return httpx.get(f"http://{HOST}:{port}{path}", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _tcp_ok(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1):
            return True
    except OSError:
        return False


def _ready(pod: Pod) -> bool:
    """The pod answers as its kind says it is ready (Clarion: ``/readyz``)."""
    if pod.kind == "clarion":
        return _http_ok(pod.port, "/readyz")
    if pod.kind == "sio":
        return _http_ok(pod.port, "/healthz")
    return _tcp_ok(pod.port)


def launch_pod(
    system: System,
    label: str,
    log_dir: Path,
    env: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
) -> Pod:
    """Start one more pod of ``label`` on ``system``'s vhost (``args`` appended to its
    command line: a later flag wins); it is not waited for (``wait_ready``)."""
    assert system.vhost is not None
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("CLARION_")}
    run_env.update(env or {})
    repo = str(Path(__file__).resolve().parent.parent)
    run_env["PYTHONPATH"] = os.pathsep.join(p for p in (run_env.get("PYTHONPATH", ""), repo) if p)
    port = free_port(HOST)
    name = f"bench-{uuid.uuid4().hex[:6]}-{len(system.pods)}"
    kind, cmd = _cmd(label, port, name, system.vhost.amqp_url)
    system.kind = kind
    log_path = log_dir / f"{label.replace('[', '_').replace(']', '')}-{name}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [*cmd, *args], stdout=log, stderr=subprocess.STDOUT, env=run_env, cwd=repo
        )
    pod = Pod(kind, port, proc, log_path, name)
    system.pods.append(pod)
    return pod


def wait_ready(pod: Pod, deadline: float, label: str = "") -> None:
    """Poll until ``pod`` is ready; raise if it exits or ``deadline`` (monotonic) passes."""
    while not _ready(pod):
        if not pod.alive():
            raise RuntimeError(f"{label} pod exited: {pod.log_tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{label} pod not ready: {pod.log_tail()}")
        time.sleep(0.1)


def start_system(
    label: str,
    pods: int,
    log_dir: Path,
    env: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
) -> System:
    """Start ``pods`` pods of ``label`` on a fresh vhost; return once all consume."""
    vhost = Vhost().create()
    system = System(label=label, kind="", vhost=vhost)
    try:
        for _ in range(pods):
            launch_pod(system, label, log_dir, env, args)
        deadline = time.monotonic() + 40
        for pod in system.pods:
            wait_ready(pod, deadline, label)
        # Every pod's queue must be bound and consumed before anything is
        # published (the management API lags a couple of seconds).
        while vhost.consuming_queues() < pods:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{label}: pod queues not consumed in time")
            time.sleep(0.25)
    except BaseException:
        system.stop()
        raise
    return system


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes so far."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
    return total


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            total += psutil.Process(pid).memory_info().rss
    return total


def machine() -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "load1": round(os.getloadavg()[0], 2),
    }
