"""Clarion beside Node socket.io + Redis and python-socketio, each with its own backend.

    .venv/bin/python -m bench.peers           # node, clarion, sio; 3 interleaved repeats
    .venv/bin/python -m bench.peers --systems node,clarion,clarion[nobatch] --only s2
    .venv/bin/python -m bench.peers --ab 7964ef9          # clarion@REV (its pods and client) too
    .venv/bin/python -m bench.peers --ab 7964ef9,HEAD     # two revisions (committed work only)

Every system runs 2 pods (S3: one fresh pod) and a backend process of its own, so
the publishing side's CPU is counted beside the pods' and the broker's apart:

- ``node``: one ``node bench/node/server.js`` per pod (socket.io 4.8, WebSocket
  transport only, ``@socket.io/redis-adapter`` on the machine's Redis under a key
  prefix of this run's own: the Redis is shared, nothing is flushed); the backend
  is ``bench/node/emitter.js`` (``@socket.io/redis-emitter``). Versions are pinned by
  ``bench/node/package-lock.json``; ``npm ci`` there installs them (done here if
  ``node_modules`` is missing).
- ``clarion``: ``clarion serve`` pods; the backend ``bench/backend.py`` publishes
  with ``clarion_client.AsyncPublisher`` through ``POST /api/publish`` (202 after
  the broker's confirm). ``clarion[nobatch]``: the same, coalescing off
  (``max_batch=1``, one request per message). ``clarion@REV``: pods and client at
  REV (``--ab``).
- ``sio``: ``bench/sio_server.py`` pods; the backend emits with python-socketio's
  ``AsyncAioPikaManager(write_only=True)``.

Scenarios per system and repeat (systems interleaved within each repeat):

- ``S1``: ``--broadcasts`` (500) broadcasts to ``--sockets`` (400) sockets, one
  after the other (Clarion's backend awaits each 202; the emitters do not wait;
  ``--s1-concurrency N``: the Python backends keep N in flight, as Node's emitter
  keeps all of them).
  Deliveries/s from the first publish to the last receive; CPU per delivery.
- ``S2``: targeted messages, ``--rate`` (500)/s for ``--duration`` (4) s to random
  users, open loop (a message's ``"t"`` is when it was due). CPU per message, p99.
- ``S2-seq``, ``S2-conc``: ``--burst`` (1000) targeted messages from a backend
  publishing one after the other, and from 16 callers at once.
- ``S3``: one fresh pod, ``--idle`` (2000) sockets, RSS per idle socket.

Rows go to ``bench/results/<date>.jsonl`` (tagged); the table printed at the end
holds medians and ratios to ``node`` of the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psutil

from testkit.net import free_port

from .loadgen import LoadGen, raise_nofile
from .scenarios import percentile
from .servers import (
    HOST,
    Pod,
    System,
    broker_pid,
    cpu_seconds,
    machine,
    rss_bytes,
    start_system,
    wait_ready,
)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
NODE_DIR = HERE / "node"
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379")
SIO_PATH = "/socket.io/?EIO=4&transport=websocket&user=u{i}"


def ensure_node() -> None:
    """``npm ci`` in bench/node when its modules are missing (the lock file pins them)."""
    if (NODE_DIR / "node_modules" / "socket.io").is_dir():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("the node peer needs node and npm on the PATH")
    subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True)


def redis_pid() -> int | None:
    port = int(REDIS_URL.rsplit(":", 1)[1].split("/")[0])
    with contextlib.suppress(psutil.Error):
        for c in psutil.net_connections("tcp"):
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port:
                return int(c.pid) if c.pid else None
    return None


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLARION_")}
    paths = [(extra or {}).get("PYTHONPATH", ""), str(REPO)]
    env.update(extra or {})
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    return env


def start_node(pods: int, log_dir: Path, key: str) -> System:
    system = System(label="node", kind="sio")
    try:
        for k in range(pods):
            port = free_port(HOST)
            name = f"node-{key[-6:]}-{k}"
            log_path = log_dir / f"{name}.log"
            with open(log_path, "wb") as log:
                proc = subprocess.Popen(
                    ["node", "server.js", "--port", str(port), "--redis", REDIS_URL, "--key", key],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=NODE_DIR,
                )
            system.pods.append(Pod("sio", port, proc, log_path, name))
        deadline = time.monotonic() + 30
        for pod in system.pods:
            wait_ready(pod, deadline, "node")
    except BaseException:
        system.stop()
        raise
    return system


class Backend:
    """A publishing process answering JSON-line commands (backend.py, emitter.js)."""

    def __init__(self, cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> None:
        self.log = open(log, "wb")
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, cwd=cwd, env=env
        )
        if self._read().get("ready") is not True:
            raise RuntimeError(f"backend not ready: {log.read_text()[-2000:]}")

    @property
    def pid(self) -> int:
        return int(self.proc.pid)

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"backend exited: {Path(self.log.name).read_text()[-2000:]}")
        out: dict[str, Any] = json.loads(line)
        return out

    def call(self, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd).encode() + b"\n")
        self.proc.stdin.flush()
        return self._read()

    def stop(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            assert self.proc.stdin is not None
            self.proc.stdin.write(b'{"cmd": "quit"}\n')
            self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.log.close()


class Peers:
    def __init__(self, args: argparse.Namespace, lg: LoadGen, log_dir: Path, emit: Any) -> None:
        self.args = args
        self.lg = lg
        self.log_dir = log_dir
        self.emit = emit
        self.envs: dict[str, dict[str, str]] = {}
        self.rabbit = broker_pid()
        self.redis = redis_pid()

    # -- systems ---------------------------------------------------------------

    def start(self, label: str, pods: int) -> tuple[System, int | None, str]:
        """The pods, the broker's pid, and a Redis key prefix (node) of their own."""
        key = f"clarion-bench-{uuid.uuid4().hex[:10]}"
        if label == "node":
            return start_node(pods, self.log_dir, key), self.redis, key
        pod_label = "clarion" if label.startswith("clarion[") else label
        system = start_system(pod_label, pods, self.log_dir, self.envs.get(label))
        system.label = label
        return system, self.rabbit, key

    def backend(self, label: str, system: System, key: str) -> Backend:
        log = self.log_dir / f"backend-{label.replace('[', '_').replace(']', '')}.log"
        if label == "node":
            offset = time.time() - time.monotonic()
            cmd = ["node", "emitter.js", "--redis", REDIS_URL, "--key", key]
            return Backend([*cmd, "--clock", repr(offset)], NODE_DIR, dict(os.environ), log)
        cmd = [sys.executable, "-m", "bench.backend"]
        if label == "sio":
            cmd += ["--system", "sio", "--amqp-url", system.amqp_url]
        else:
            urls = ",".join(f"http://{h}:{p}" for h, p in system.addrs)
            cmd += ["--system", "clarion", "--urls", urls]
            if label == "clarion[nobatch]":
                cmd += ["--max-batch", "1"]
        return Backend(cmd, REPO, _env(self.envs.get(label)), log)

    # -- one repeat of one system ------------------------------------------------

    def run(self, label: str, rep: int, only: set[str]) -> None:
        a = self.args
        if only & {"s1", "s2", "s2seq", "s2conc"}:
            system, broker, key = self.start(label, 2)
            backend = None
            try:
                res = self.lg.connect(
                    system.addrs,
                    system.path if label != "node" else SIO_PATH,
                    system.dialect,
                    a.sockets,
                )
                backend = self.backend(label, system, key)
                time.sleep(0.5)
                base = {"sockets": res["ok"], "connect_failed": res["failed"], "pods": 2}

                def measure(scenario: str, cmd: dict[str, Any], per_message: int = 1) -> None:
                    assert backend is not None
                    self._measure(
                        scenario, label, rep, system, backend, broker, base, cmd, per_message
                    )

                if "s1" in only:
                    burst = {
                        "cmd": "burst",
                        "count": a.broadcasts,
                        "pad": a.pad,
                        "concurrency": a.s1_concurrency,
                    }
                    measure("S1", burst, res["ok"])
                if "s2" in only:
                    measure(
                        "S2",
                        {
                            "cmd": "paced",
                            "users": a.sockets,
                            "rate": a.rate,
                            "duration": a.duration,
                            "pad": a.pad,
                            "seed": rep + 1,
                        },
                    )
                for name, scenario, conc in (("s2seq", "S2-seq", 1), ("s2conc", "S2-conc", 16)):
                    if name in only:
                        measure(
                            scenario,
                            {
                                "cmd": "burst",
                                "count": a.burst,
                                "pad": a.pad,
                                "target": "user",
                                "users": a.sockets,
                                "concurrency": conc,
                                "seed": rep + 1,
                            },
                        )
            finally:
                if backend is not None:
                    backend.stop()
                self.lg.call("close_all")
                system.stop()
        if "s3" in only:
            self._idle(label, rep)

    def _measure(
        self,
        scenario: str,
        label: str,
        rep: int,
        system: System,
        backend: Backend,
        broker: int | None,
        base: dict[str, Any],
        cmd: dict[str, Any],
        per_message: int,
    ) -> None:
        """One command to the backend; CPU of pods, backend and broker around it."""
        self.lg.call("reset")
        spies = []
        if self.args.profile and rep == 0 and label.startswith("clarion"):
            from .profile import PySpy

            out_dir = HERE / "results"
            name = f"peers-{scenario}-{label.replace('[', '_').replace(']', '')}"
            spies = [
                PySpy(system.pids[0], out_dir / f"{name}-pod.txt").start(),
                PySpy(backend.pid, out_dir / f"{name}-backend.txt").start(),
            ]
        pids = system.pids
        c0, p0 = cpu_seconds(pids), cpu_seconds([backend.pid])
        b0 = cpu_seconds([broker]) if broker else 0.0
        out = backend.call(**cmd)
        accepted = int(out.get("accepted", out["sent"]))
        expected = accepted * per_message
        self.lg.wait_received(expected, idle_timeout=3.0)
        c1, p1 = cpu_seconds(pids), cpu_seconds([backend.pid])
        b1 = cpu_seconds([broker]) if broker else 0.0
        got, last, lat = self.lg.stats()
        for spy in spies:
            spy.stop()
        unit = max(1, got)
        row: dict[str, Any] = {"scenario": scenario, "system": label, "run": rep, **machine()}
        row.update(base)
        row.update(
            messages=out["sent"],
            accepted=accepted,
            expected=out["sent"] * per_message,
            delivered=got,
            lost=out["sent"] * per_message - got,
            elapsed_s=round(max(1e-6, last - out["first"]), 3),
            publish_s=round(out["last"] - out["first"], 3),
            deliveries_per_s=round(got / max(1e-6, last - out["first"])),
            pod_cpu_s=round(c1 - c0, 3),
            backend_cpu_s=round(p1 - p0, 3),
            broker_cpu_s=round(b1 - b0, 3),
            pod_us=round((c1 - c0) / unit * 1e6, 2),
            backend_us=round((p1 - p0) / unit * 1e6, 2),
            broker_us=round((b1 - b0) / unit * 1e6, 2),
            per="delivery" if per_message > 1 else "message",
            broker="redis" if label == "node" else "rabbitmq",
        )
        for q, name in ((0.5, "p50_ms"), (0.99, "p99_ms")):
            v = percentile(lat, q)
            row[name] = None if v is None else round(v * 1000, 2)
        answered = out.get("answered") or []
        v = percentile(answered, 0.99)
        row["api_p99_ms"] = None if v is None else round(v * 1000, 2)
        self.emit(row)

    def _idle(self, label: str, rep: int) -> None:
        system, _, _ = self.start(label, 1)
        path = SIO_PATH if label == "node" else system.path
        try:
            self.lg.connect(system.addrs, path, system.dialect, 20)
            self.lg.call("close_all")
            time.sleep(0.5)
            rss0 = rss_bytes(system.pids)
            res = self.lg.connect(
                system.addrs, path, system.dialect, self.args.idle, user_offset=100
            )
            time.sleep(1.5)
            rss1 = rss_bytes(system.pids)
            row: dict[str, Any] = {"scenario": "S3", "system": label, "run": rep, **machine()}
            row.update(
                sockets=res["ok"],
                connect_failed=res["failed"],
                rss_base_mib=round(rss0 / 2**20, 1),
                rss_kib_per_socket=round((rss1 - rss0) / 1024 / max(1, res["ok"]), 1),
            )
            self.emit(row)
        finally:
            self.lg.call("close_all")
            system.stop()


# -- the table -------------------------------------------------------------------------


def _med(rows: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def table(rows: list[dict[str, Any]], systems: list[str]) -> str:
    """Medians per scenario and system, and each one's ratio to node's in the same rows."""
    metrics = {
        "S1": [
            ("pod_us", "pod CPU µs/delivery"),
            ("backend_us", "backend µs/delivery"),
            ("deliveries_per_s", "deliveries/s"),
            ("p99_ms", "p99 ms"),
            ("broker_us", "broker µs/delivery"),
        ],
        "S2": [
            ("pod_us", "pod CPU µs/msg"),
            ("backend_us", "backend µs/msg"),
            ("p50_ms", "p50 ms"),
            ("p99_ms", "p99 ms"),
            ("broker_us", "broker µs/msg"),
        ],
        "S2-seq": [
            ("pod_us", "pod CPU µs/msg"),
            ("backend_us", "backend µs/msg"),
            ("deliveries_per_s", "msgs/s"),
            ("p99_ms", "p99 ms"),
        ],
        "S2-conc": [
            ("pod_us", "pod CPU µs/msg"),
            ("backend_us", "backend µs/msg"),
            ("deliveries_per_s", "msgs/s"),
            ("p99_ms", "p99 ms"),
        ],
        "S3": [("rss_kib_per_socket", "KiB per idle socket")],
    }
    present = [s for s in systems if any(r["system"] == s for r in rows)]
    lines = [
        "| scenario | metric | "
        + " | ".join(present)
        + " | "
        + " | ".join(f"{s} / node" for s in present if s != "node")
        + " |"
    ]
    lines.append("|" + "---|" * (2 + len(present) + len([s for s in present if s != "node"])))
    for scenario, ms in metrics.items():
        sc = [r for r in rows if r["scenario"] == scenario]
        if not sc:
            continue
        for key, name in ms:
            meds = {s: _med([r for r in sc if r["system"] == s], key) for s in present}
            cells = ["-" if meds[s] is None else f"{meds[s]:g}" for s in present]
            ratios = []
            for s in present:
                if s == "node":
                    continue
                n, v = meds.get("node"), meds[s]
                ratios.append("-" if not n or v is None else f"{v / n:.2f}")
            lines.append(f"| {scenario} | {name} | " + " | ".join(cells + ratios) + " |")
        lost = {s: sum(r.get("lost", 0) or 0 for r in sc if r["system"] == s) for s in present}
        lines.append(
            f"| {scenario} | lost (all runs) | "
            + " | ".join(str(lost[s]) for s in present)
            + " |" * (len([s for s in present if s != "node"]) + 1)
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.peers")
    p.add_argument("--systems", default="node,clarion,sio")
    p.add_argument("--only", default="s1,s2,s2seq,s2conc,s3")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--sockets", type=int, default=400)
    p.add_argument("--broadcasts", type=int, default=500)
    p.add_argument(
        "--s1-concurrency",
        type=int,
        default=1,
        help="S1: broadcasts the python backends keep in flight (1: each awaited before the next)",
    )
    p.add_argument("--rate", type=float, default=500.0)
    p.add_argument("--duration", type=float, default=4.0)
    p.add_argument("--burst", type=int, default=1000)
    p.add_argument("--idle", type=int, default=2000)
    p.add_argument("--pad", type=int, default=200)
    p.add_argument(
        "--ab", default=None, help="also clarion@REV (comma-separated: several): pods and client"
    )
    p.add_argument("--tag", default="peers")
    p.add_argument("--loadgen", type=int, default=2)
    p.add_argument("--profile", action="store_true", help="py-spy clarion's pod 0 and backend")
    p.add_argument("--report", default=None, help="only print the table of a results file")
    args = p.parse_args(argv)
    systems = args.systems.split(",")
    if args.report:
        found = [json.loads(x) for x in Path(args.report).read_text().splitlines() if x.strip()]
        picked = [r for r in found if r.get("bench") == "peers" and r.get("tag") == args.tag]
        print(table(picked, systems))
        return 0
    raise_nofile()
    if "node" in systems:
        ensure_node()
    log_dir = Path(tempfile.mkdtemp(prefix="clarion-peers-"))
    out = HERE / "results" / f"{datetime.date.today().isoformat()}.jsonl"
    run_id = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    rows: list[dict[str, Any]] = []

    def emit(row: dict[str, Any]) -> None:
        row.update(run_id=run_id, tag=args.tag, clarion=commit, bench="peers")
        rows.append(row)
        with open(out, "a") as f:
            f.write(json.dumps(row) + "\n")
        keep = (
            "scenario",
            "system",
            "run",
            "load1",
            "pod_us",
            "backend_us",
            "broker_us",
            "deliveries_per_s",
            "p99_ms",
            "lost",
            "rss_kib_per_socket",
        )
        print("  " + json.dumps({k: row[k] for k in keep if k in row}), flush=True)

    lg = LoadGen(args.loadgen)
    peers = Peers(args, lg, log_dir, emit)
    for rev in args.ab.split(",") if args.ab else []:
        from .__main__ import _snapshot

        into = log_dir / f"ab-{rev}"
        into.mkdir()
        commit = _snapshot(rev, into)
        # Its client too (the backend imports clarion_client from PYTHONPATH first).
        archive = subprocess.run(
            ["git", "archive", commit, "clients/python/src"], cwd=REPO, capture_output=True
        ).stdout
        if archive:
            subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
        label = f"clarion@{rev}"
        systems.append(label)
        client = into / "clients" / "python" / "src"
        paths = [into / "service", *([client] if client.is_dir() else [])]
        peers.envs[label] = {"PYTHONPATH": os.pathsep.join(map(str, paths))}
    only = set(args.only.split(","))
    print(
        f"peers {run_id}: load {os.getloadavg()[0]:.2f}, systems {systems}, logs {log_dir}",
        flush=True,
    )
    try:
        for rep in range(args.reps):
            for label in systems:  # interleaved: every system once per repeat
                print(f"repeat {rep}: {label}", flush=True)
                peers.run(label, rep, only)
    finally:
        lg.close()
    print(f"load {os.getloadavg()[0]:.2f} at the end")
    print(table(rows, systems))
    return 0


if __name__ == "__main__":
    sys.exit(main())
