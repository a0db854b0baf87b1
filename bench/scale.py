"""The scaling benchmark (``python -m bench --only scale``): what a message costs as pods grow.

For 2, 4, 8, 16 pods (real ``clarion serve`` processes on one vhost of their
own), in each routing mode (``CLARION_ROUTING=fanout|direct``), with a few idle
sockets per pod (each user on exactly one pod), messages are published through
``POST /api/publish`` on pod 0 at a fixed rate with a few requests in flight:

- ``user``: to users held by pod 1 only (the "holder"),
- ``absent``: to users connected nowhere,
- ``broadcast``: to every socket (at a lower rate: every socket receives each).

Per message: CPU of the publishing pod (0), of the holder (1), the median of
the pods holding none (2..P-1, or 1..P-1 for ``absent``), of RabbitMQ (its
``beam.smp``), and the cluster total (every pod + RabbitMQ). Each measured
window is preceded by an idle window of the same length; every process's idle
CPU rate is subtracted. CPU is read from ``/proc/<pid>/stat`` (utime + stime).
Every recipient socket's count is checked (zero loss, nothing extra).

Then what a connect + disconnect costs: sockets of distinct users connecting
to pod 1 (a bounded number of handshakes in flight), then closing, until the
pod counts none of them and the vhost's bindings are back where they were.

Rows go out through ``emit`` (one JSON line each); report.py's ``summarize_scale``
prints their medians, fits the scaling model and draws ``bench/scale.png``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import multiprocessing as mp
import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from . import loadgen
from .loadgen import LoadGen, Worker
from .publish import _HttpConn
from .report import FOREIGN_LIMIT, RABBIT_IDLE_MAX, summarize_scale
from .scenarios import Bench
from .servers import System, machine, rss_bytes, start_system
from .wsclient import WSClient

HERE = Path(__file__).resolve().parent
_TICK = os.sysconf("SC_CLK_TCK")
USERS_PER_POD = 5


# -- CPU from /proc ---------------------------------------------------------------


def proc_cpu(pid: int | None) -> float:
    """utime + stime of one process, seconds (0 if it is gone)."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    return float(sum(vals) - idle), float(sum(vals))


def rabbit_pid() -> int | None:
    """The RabbitMQ node's ``beam.smp``."""
    try:
        out = subprocess.run(["pgrep", "-f", "beam.smp"], capture_output=True, text=True).stdout
    except OSError:
        out = ""
    pids = [int(x) for x in out.split()]
    if not pids:
        for d in os.listdir("/proc"):
            if d.isdigit():
                with contextlib.suppress(OSError), open(f"/proc/{d}/comm") as f:
                    if f.read().strip() == "beam.smp":
                        pids.append(int(d))
    # The node is the busiest beam.smp (a CLI tool may run one briefly).
    return max(pids, key=proc_cpu) if pids else None


class Meter:
    """CPU seconds of every pod and of RabbitMQ, and the machine's busy share, over a window.

    ``mine`` are the bench's other processes (load generators, the publisher):
    what the machine spent beyond them, the pods and RabbitMQ is other people's
    work ("foreign"), and a window with much of it is measured again.
    """

    def __init__(self, pids: list[int], rabbit: int | None, mine: list[int]) -> None:
        self.pids = pids
        self.rabbit = rabbit
        self.mine = mine

    def read(self) -> dict[str, Any]:
        return {
            "t": time.monotonic(),
            "pods": [proc_cpu(p) for p in self.pids],
            "rabbit": proc_cpu(self.rabbit),
            "mine": sum(proc_cpu(p) for p in self.mine),
            "machine": machine_busy(),
        }

    @staticmethod
    def delta(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        busy = b["machine"][0] - a["machine"][0]
        total = max(1.0, b["machine"][1] - a["machine"][1])
        pods = [y - x for x, y in zip(a["pods"], b["pods"], strict=True)]
        rabbit = b["rabbit"] - a["rabbit"]
        ours = sum(pods) + rabbit + b["mine"] - a["mine"]
        cores = os.cpu_count() or 1
        return {
            "s": b["t"] - a["t"],
            "pods": pods,
            "rabbit": rabbit,
            "busy_pct": 100.0 * busy / total,
            "foreign_pct": max(0.0, 100.0 * (busy / _TICK - ours) / (total / _TICK)),
            "cores": cores,
        }


def net(window: dict[str, Any], idle: dict[str, Any]) -> dict[str, Any]:
    """CPU of a window minus each process's idle rate times the window's length."""
    k = window["s"] / max(1e-6, idle["s"])
    return {
        "pods": [w - i * k for w, i in zip(window["pods"], idle["pods"], strict=True)],
        "rabbit": window["rabbit"] - idle["rabbit"] * k,
    }


# -- sockets that count what they receive ---------------------------------------


class CountingClient(WSClient):
    """A load-generator socket that also counts its own messages."""

    __slots__ = ("count",)

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.count = 0

    def _message(self, text: str) -> None:
        before = self.stats.received
        super()._message(text)
        if self.stats.received != before:
            self.count += 1


class ScaleWorker(Worker):
    """A load-generator process whose sockets (``CountingClient``) are counted per user."""

    def _users(self) -> dict[str, CountingClient]:
        return {c.path.rsplit("user=", 1)[1]: c for c in self.clients}

    async def cmd_counts(self) -> dict[str, int]:
        return {u: c.count for u, c in self._users().items()}

    async def cmd_reset_counts(self) -> None:
        self.stats.reset()
        for c in self.clients:
            c.count = 0


def _scale_main(conn: Any) -> None:
    """A load-generator process (``loadgen._main``) whose sockets count their messages."""
    loadgen.WSClient = CountingClient  # type: ignore[misc]
    loadgen.Worker = ScaleWorker  # type: ignore[misc]
    loadgen._main(conn)


class ScaleLoadGen(LoadGen):
    """Load-generator processes running ``ScaleWorker``."""

    def __init__(self, processes: int) -> None:
        ctx = mp.get_context("spawn")
        self.pipes = []
        self.procs = []
        for _ in range(processes):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_scale_main, args=(child,), daemon=True)
            p.start()
            self.pipes.append(parent)
            self.procs.append(p)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for part in self.call("counts"):
            out.update(part)
        return out


# -- publishing ------------------------------------------------------------------


async def publish_paced(
    addr: tuple[str, int], targets: list[dict[str, Any]], rate: float, pad: int, inflight: int = 4
) -> dict[str, Any]:
    """POST one message per target to ``/api/publish`` at ``rate``/s, ``inflight`` at most.

    ``inflight`` senders, each on a keep-alive connection, take the next message,
    wait until it is due (if it is not late already) and post it.
    """
    start = time.time() + 0.02
    todo = iter(enumerate(targets))
    statuses: dict[int, int] = {}
    failures = []

    async def sender() -> None:
        conn = _HttpConn(*addr)
        try:
            for i, target in todo:
                due = start + i / rate
                await asyncio.sleep(max(0.0, due - time.time()))
                body = orjson.dumps({**target, "data": {"t": due, "s": i, "p": "x" * pad}})
                try:
                    status = await asyncio.wait_for(conn.post("/api/publish", body), 10)
                except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
                    failures.append(type(exc).__name__)
                    conn.close()
                    conn = _HttpConn(*addr)
                    continue
                statuses[status] = statuses.get(status, 0) + 1
        finally:
            conn.close()

    await asyncio.gather(*(sender() for _ in range(inflight)))
    elapsed = time.time() - start
    accepted = statuses.get(202, 0)
    return {
        "sent": len(targets),
        "accepted": accepted,
        "errors": len(targets) - accepted,
        "rate": len(targets) / max(1e-6, elapsed),
    }


# -- the gateway, seen from outside -----------------------------------------------


def pod_connections(port: int) -> float | None:
    """The ``clarion_connections`` gauge of one pod."""
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    except httpx.HTTPError:
        return None
    for line in text.splitlines():
        if line.startswith("clarion_connections ") or line.startswith("clarion_connections{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def bindings(system: System) -> int:
    assert system.vhost is not None
    try:
        return len(system.vhost.api("/api/bindings/{vhost}"))
    except httpx.HTTPError:
        return -1


def wait_for(cond: Any, timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return bool(cond())


def _us(seconds: float, n: int) -> float:
    return round(seconds / max(1, n) * 1e6, 1)


def _med(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


# -- the scenario ----------------------------------------------------------------


class Scale(Bench):
    """One ``--only scale`` invocation (the knobs of ``Bench``, and the rates)."""

    def __init__(
        self,
        *args: Any,
        rate: float = 150.0,
        seconds: float = 5.0,
        broadcast_rate: float | None = None,
        connects: int = 1000,
    ) -> None:
        super().__init__(*args)
        self.env = dict(self.env or {})
        self.rate = rate
        self.seconds = seconds
        # Every socket receives each broadcast: a third of the rate keeps 16 pods unsaturated.
        self.broadcast_rate = broadcast_rate or rate / 3
        self.connects = connects
        self.rabbit = rabbit_pid()
        self.rows: list[dict[str, Any]] = []
        self.source = ""
        self.foreign_limit = FOREIGN_LIMIT
        self.rabbit_idle_max = RABBIT_IDLE_MAX
        self.attempts = 2

    def emit(self, row: dict[str, Any]) -> None:
        row["service_sha1"] = self.source
        self.rows.append(row)
        super().emit(row)

    def _freeze_source(self) -> None:
        """Run every system of the sweep on one copy of ``service/`` (others edit the tree)."""
        if "PYTHONPATH" in self.env:
            return  # --clarion-rev: already a snapshot
        into = self.log_dir / "scale-source"
        # BENCH_SCALE_SOURCE: the copy of an earlier run, to add runs of the same code.
        given = os.environ.get("BENCH_SCALE_SOURCE")
        if given:
            into = Path(given)
        else:
            shutil.copytree(
                HERE.parent / "service", into, ignore=shutil.ignore_patterns("__pycache__")
            )
        self.env["PYTHONPATH"] = str(into)
        digest = hashlib.sha1()
        for f in sorted(into.rglob("*.py")):
            digest.update(f.read_bytes())
        self.source = digest.hexdigest()[:10]
        print(f"  scale: the pods run service/ from {into} (sha1 of its .py files {self.source})")

    def run(self, pod_counts: list[int], modes: list[str]) -> list[dict[str, Any]]:
        self._freeze_source()
        if self.rabbit is None:
            print("  scale: no beam.smp found; RabbitMQ CPU reads as 0", flush=True)
        for mode in modes:
            for pods in pod_counts:
                print(f"scale: {pods} pods, routing {mode}", flush=True)
                self.one_system(mode, pods, connect_phase=pods == pod_counts[0])
        return self.rows

    def one_system(self, mode: str, pods: int, connect_phase: bool) -> None:
        env = {**self.env, "CLARION_ROUTING": mode}
        system = start_system("clarion", pods, self.log_dir, env)
        clients = ScaleLoadGen(1)
        try:
            holders = {
                f"p{k}u{j}": k for k in range(pods) for j in range(USERS_PER_POD)
            }  # user -> the one pod holding it
            for k, addr in enumerate(system.addrs):
                res = clients.connect([addr], f"/ws?user=p{k}u{{i}}", "clarion", USERS_PER_POD)
                if res["failed"]:
                    raise RuntimeError(f"scale: {res['failed']} sockets failed on pod {k}")
            mine = [os.getpid(), *clients.pids, *self.lg.pids]
            meter = Meter(system.pids, self.rabbit, mine)
            self._settle(meter)
            for run in range(self.reps):
                for kind in ("user", "absent", "broadcast"):
                    self.message_phase(system, clients, meter, mode, kind, run, holders)
                if connect_phase:
                    self.connect_phase(system, meter, mode, run)
        finally:
            clients.close()
            system.stop()

    def _settle(self, meter: Meter, timeout: float = 30.0) -> None:
        """Wait until the pods' start-up work is over: their CPU under 5% of a core, twice."""
        deadline = time.monotonic() + timeout
        quiet = 0
        while quiet < 2 and time.monotonic() < deadline:
            d = self._idle(meter, 1.0)
            quiet = quiet + 1 if sum(d["pods"]) / d["s"] < 0.05 else 0

    def _noisy(self, d: dict[str, Any]) -> bool:
        """Other people's work in a window: their processes, or RabbitMQ busy for them."""
        return d["foreign_pct"] > self.foreign_limit or d["rabbit"] / d["s"] > self.rabbit_idle_max

    def _quiet(self, meter: Meter, timeout: float = 8.0) -> None:
        """Wait (a while at most) for a moment without other people's bursts."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._noisy(self._idle(meter, 0.5)):
            pass

    def _idle(self, meter: Meter, seconds: float) -> dict[str, Any]:
        a = meter.read()
        time.sleep(seconds)
        return Meter.delta(a, meter.read())

    def message_phase(
        self,
        system: System,
        clients: ScaleLoadGen,
        meter: Meter,
        mode: str,
        kind: str,
        run: int,
        holders: dict[str, int],
    ) -> None:
        pods = len(system.pods)
        rate = self.broadcast_rate if kind == "broadcast" else self.rate
        n = int(rate * self.seconds)
        on_holder = [u for u, k in holders.items() if k == 1]
        if kind == "user":
            targets: list[dict[str, Any]] = [
                {"user": on_holder[i % len(on_holder)]} for i in range(n)
            ]
        elif kind == "absent":
            targets = [{"user": f"nobody{i % 50}"} for i in range(n)]
        else:
            targets = [{"broadcast": True} for _ in range(n)]
        expected = dict.fromkeys(holders, 0)
        for t in targets:
            if "user" in t and t["user"] in expected:
                expected[t["user"]] += 1
            elif "broadcast" in t:
                for u in expected:
                    expected[u] += 1
        want = sum(expected.values())
        for attempt in range(1, self.attempts + 1):
            last = attempt == self.attempts
            clients.call("reset_counts")
            self._quiet(meter)
            idle = self._idle(meter, self.seconds)
            if self._noisy(idle) and not last:
                continue  # someone else's burst: the baseline would be wrong
            a = meter.read()
            out = asyncio.run(publish_paced(system.addrs[0], targets, rate, self.pad))
            clients.wait_received(want, idle_timeout=10.0, cap=60.0)
            time.sleep(0.5)  # the pods holding none consume their copies (fanout) just after
            window = Meter.delta(a, meter.read())
            if window["foreign_pct"] <= self.foreign_limit or last:
                break
        counts = clients.counts()
        got, _, lat = clients.stats()
        lost = sum(max(0, expected[u] - counts.get(u, 0)) for u in expected)
        extra = sum(max(0, counts.get(u, 0) - expected[u]) for u in expected)
        cpu = net(window, idle)
        msgs = max(1, out["accepted"])
        if kind == "user":
            others = list(range(2, pods))
            holder: int | None = 1
        else:
            others = list(range(1, pods))
            holder = None
        pods_total = sum(cpu["pods"])
        lat = sorted(lat)
        row = {
            "scenario": "scale",
            "system": f"clarion/{mode}",
            "routing": mode,
            "kind": kind,
            "run": run,
            "pods": pods,
            "sockets": pods * USERS_PER_POD,
            **machine(),
            "rate": rate,
            "rate_achieved": round(out["rate"], 1),
            "sent": out["sent"],
            "accepted": out["accepted"],
            "http_errors": out["errors"],
            "expected": want,
            "delivered": got,
            "lost": lost,
            "extra": extra,
            "lat_p50_ms": round(lat[len(lat) // 2] * 1e3, 2) if lat else None,
            "lat_p99_ms": round(lat[int(0.99 * (len(lat) - 1))] * 1e3, 2) if lat else None,
            "window_s": round(window["s"], 2),
            "busy_pct": round(window["busy_pct"], 1),
            "idle_busy_pct": round(idle["busy_pct"], 1),
            "foreign_pct": round(window["foreign_pct"], 1),
            "idle_foreign_pct": round(idle["foreign_pct"], 1),
            "attempts": attempt,
            "lost_on_pods": sorted({holders[u] for u in expected if counts.get(u, 0) < expected[u]})
            or None,
            "idle_pod_us_per_s": round(statistics.median(idle["pods"]) / idle["s"] * 1e6),
            "idle_rabbit_us_per_s": round(idle["rabbit"] / idle["s"] * 1e6),
            "publisher_us": _us(cpu["pods"][0], msgs),
            "holder_us": _us(cpu["pods"][holder], msgs) if holder is not None else None,
            "none_us": _us(_med([cpu["pods"][k] for k in others]) or 0.0, msgs) if others else None,
            "pods_us": _us(pods_total, msgs),
            "rabbit_us": _us(cpu["rabbit"], msgs),
            "cluster_us": _us(pods_total + cpu["rabbit"], msgs),
            "rss_mib_per_pod": round(rss_bytes(system.pids) / 2**20 / pods, 1),
        }
        if kind == "broadcast":
            row["per_pod_us"] = _us(statistics.median(cpu["pods"][1:]), msgs)
        self.emit(row)

    def connect_phase(self, system: System, meter: Meter, mode: str, run: int) -> None:
        """``self.connects`` distinct users connect to pod 1, then close; cost per cycle."""
        lg = self.lg
        port = system.pods[1].port
        base_conns = pod_connections(port)
        base_binds = bindings(system)
        for _ in range(self.attempts):
            self._quiet(meter)
            idle = self._idle(meter, 3.0)
            if not self._noisy(idle):
                break
        a = meter.read()
        res = lg.connect(
            [system.addrs[1]],
            "/ws?user=c{i}",
            "clarion",
            self.connects,
            concurrency=50,
            user_offset=100_000 * (run + 1),
        )
        peak_binds = bindings(system)
        t_close = time.time()
        lg.call("close_all")
        settled = wait_for(lambda: pod_connections(port) == base_conns, 30.0) and wait_for(
            lambda: bindings(system) <= base_binds, 30.0, 0.25
        )
        closed_s = time.time() - t_close
        window = Meter.delta(a, meter.read())
        cpu = net(window, idle)
        ok = res["ok"]
        storm = max(1e-6, res["last_ready"] - res["started"])
        pods_total = sum(cpu["pods"])
        row = {
            "scenario": "scale-connect",
            "system": f"clarion/{mode}",
            "routing": mode,
            "kind": "connect",
            "run": run,
            "pods": len(system.pods),
            "sockets": ok,
            **machine(),
            "connect_failed": res["failed"],
            "connects_per_s": round(ok / storm),
            "close_settled_s": round(closed_s, 2),
            "settled": settled,
            "bindings_before": base_binds,
            "bindings_peak": peak_binds,
            "window_s": round(window["s"], 2),
            "busy_pct": round(window["busy_pct"], 1),
            "foreign_pct": round(window["foreign_pct"], 1),
            "idle_foreign_pct": round(idle["foreign_pct"], 1),
            "holder_us": _us(cpu["pods"][1], ok),
            "other_us": _us(cpu["pods"][0], ok),
            "rabbit_us": _us(cpu["rabbit"], ok),
            "cluster_us": _us(pods_total + cpu["rabbit"], ok),
        }
        self.emit(row)


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.scale FILE [--tag T]``: the tables, the model and the plot again."""
    import argparse
    import json

    p = argparse.ArgumentParser(prog="python -m bench.scale", description=main.__doc__)
    p.add_argument("results", help="a bench/results/*.jsonl file")
    p.add_argument("--tag", default="", help="only the rows of these tags (comma-separated)")
    p.add_argument("--plot", default=str(HERE / "scale.png"), help="PNG path")
    args = p.parse_args(argv)
    rows = [json.loads(line) for line in Path(args.results).read_text().splitlines() if line]
    tags = set(filter(None, args.tag.split(",")))
    rows = [r for r in rows if not tags or r.get("tag") in tags]
    print(summarize_scale(rows, Path(args.plot)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
