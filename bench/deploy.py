"""The deploy scenario: a surge-first rolling restart of every pod, then a crash, under load.

    .venv/bin/python -m bench --only deploy --sockets 2000 --pods 4
    .venv/bin/python -m bench.deploy --sockets 2000 --pods 4      # the same, on its own
    .venv/bin/python -m bench.deploy --sockets 40000 --pods 4     # 4 client processes
    .venv/bin/python -m bench.deploy --clarion-rev HEAD           # a committed revision

P ``clarion serve`` pods on a vhost of their own; N clients (one user each,
spread over the pods) that recover as docs/failure-modes.md says (``bench.deployclient``);
a publisher sending targeted messages through ``POST /api/publish`` on random
live pods. At rest: RSS per socket and a broadcast to everyone. Then every pod
is replaced in turn as a Deployment with ``maxSurge`` does it (start the new
pod, wait for its ``/readyz``, SIGTERM the old one, wait for its exit: SIGKILL
after the grace period), then one pod is SIGKILLed and replaced. It ends when
every client is back and every accepted message had its chance to arrive
(conditions with deadlines). The figures: what a user notices (lost,
duplicates before dedupe, ``recovered: false``, close codes, time without a
connection, delivery latency) and what it cost (connects/s, drains, CPU).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from clarion.config import default_of, drain_seconds

from .deployclient import DeployLoad
from .loadgen import raise_nofile
from .scenarios import percentile
from .servers import (
    HOST,
    Pod,
    System,
    broker_pid,
    cpu_seconds,
    launch_pod,
    machine,
    rss_bytes,
    start_system,
    wait_ready,
)

#: One client process holds at most this many sockets above ``SPLIT_ABOVE`` sockets
#: (a process may hold 20,000 open files), each on a source address of its own.
PER_PROCESS = 10_000
SPLIT_ABOVE = 15_000
#: Pod log lines worth counting: how a pod under a reconnect storm fails.
SIGNATURES = {
    "broker check gave up": r"no answer in",
    "RESOURCE_LOCKED": r"RESOURCE_LOCKED",
    "CHANNEL_ERROR": r"CHANNEL_ERROR",
    "graceful shutdown exceeded": r"graceful shutdown exceeded",
    "binding not confirmed": r"did not confirm a binding",
    "replay failed": r"replay.*(fail|error|timed out)|(ConnectionClosed|TimeoutError)",
    "ERROR lines": r"\bERROR\b",
    "Tracebacks": r"^Traceback",
}


@dataclass
class Options:
    """The knobs of one deploy run (defaults: the issue's 2,000-socket run)."""

    sockets: int = 2000
    pods: int = 4
    rate: float = 200.0
    label: str = "clarion"
    processes: int = 0  # client processes; 0: 2, or one per 10,000 above 15,000 sockets
    drain_delay: float = float(default_of("drain_delay"))
    drain_window: float = float(default_of("drain_window"))
    grace: float = 0.0  # SIGTERM to SIGKILL; 0: the operator's (a full pod's drain + 10)
    warmup: float = 5.0  # seconds of publishing at rest before the deploy
    settle: float = 0.0  # deadline for everyone to be back after the crash; 0: by size
    tail: float = 3.0  # seconds of publishing after everyone is back
    pad: int = 200
    inflight: int = 8
    kill: bool = True
    welcome_timeout: float = 30.0  # a client gives up on an attempt without a welcome

    def client_processes(self) -> int:
        if self.processes:
            return self.processes
        return math.ceil(self.sockets / PER_PROCESS) if self.sockets > SPLIT_ABOVE else 2

    def grace_s(self) -> float:
        """The operator's grace period (without its preStop): delay + the drain of a
        full pod at ``--drain-rate`` + 10 s."""
        full = drain_seconds(
            int(default_of("max_connections")),
            self.drain_window,
            float(default_of("drain_rate")),
        )
        return self.grace or self.drain_delay + full + 10


@dataclass
class Event:
    """A pod leaving: SIGTERM (a rolling step) or SIGKILL (the crash)."""

    kind: str
    pod: str
    port: int
    at: float
    sockets: int = 0  # clients on the pod then (from the clients' own records)
    exit_s: float | None = None  # SIGTERM to exit
    exit_code: int | None = None
    killed_after_grace: bool = False
    back_max_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def reap(pod: Pod, grace: float) -> tuple[float, int | None, float, bool]:
    """Wait for ``pod`` to exit, SIGKILL after ``grace`` s: (seconds, exit code, its CPU
    seconds, whether it was killed). The CPU is read from the zombie before reaping."""
    start = time.monotonic()
    killed = False
    while os.waitid(os.P_PID, pod.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        if not killed and time.monotonic() - start > grace:
            pod.proc.kill()
            killed = True
        time.sleep(0.02)
    took = time.monotonic() - start
    cpu = cpu_seconds([pod.pid])
    return took, pod.proc.wait(), cpu, killed


def _signatures(pod: Pod) -> Counter[str]:
    text = pod.log_path.read_text(errors="replace") if pod.log_path.exists() else ""
    return Counter({k: len(re.findall(v, text, re.M)) for k, v in SIGNATURES.items()})


def _ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1000, 1)


def _s(x: float | None) -> float | None:
    return None if x is None else (x if math.isinf(x) else round(x, 2))


class Deploy:
    """One run of the scenario; ``run()`` returns its result row."""

    def __init__(
        self,
        opts: Options,
        log_dir: Path,
        env: dict[str, str] | None = None,
        say: Callable[[str], None] = print,
    ) -> None:
        self.o = opts
        self.log_dir = log_dir
        self.env = env
        self.say = say
        self.system: System | None = None
        self.clients: DeployLoad | None = None
        self.pub: DeployLoad | None = None
        self.live: list[Pod] = []
        self.events: list[Event] = []
        self.cpu_at_start: dict[int, float] = {}  # pod pid -> CPU when the deploy began
        self.cpu_final: dict[int, float] = {}  # pod pid -> CPU at its exit
        self.broadcast_id = ""
        self.t0 = time.time()

    # -- plumbing -------------------------------------------------------------

    def _args(self) -> tuple[str, ...]:
        o = self.o
        return ("--drain-delay", str(o.drain_delay), "--drain-window", str(o.drain_window))

    def _set_live(self) -> None:
        addrs = [(HOST, p.port) for p in self.live]
        assert self.clients is not None and self.pub is not None
        self.clients.call("live", addrs=addrs)
        self.pub.call("live", addrs=addrs)

    def progress(self) -> dict[str, Any]:
        assert self.clients is not None
        total: dict[str, Any] = {}
        for part in self.clients.call("progress"):
            for k, v in part.items():
                if isinstance(v, dict):
                    total.setdefault(k, Counter()).update(v)
                elif k == "longest_gap":
                    total[k] = max(total.get(k, 0.0), v)
                else:
                    total[k] = total.get(k, 0) + v
        return total

    def _line(self, what: str, p: dict[str, Any]) -> str:
        codes = ", ".join(f"{k}:{v}" for k, v in sorted(p["codes"].items()))
        nr = ", ".join(f"{k}:{v}" for k, v in p["not_recovered"].items()) or "-"
        return (
            f"  [{time.time() - self.t0:6.1f}s] {what}: connected {p['connected']}/{self.o.sockets}"
            f", welcomes {p['welcomes']}, receipts {p['receipts']} (dup {p['duplicates']})"
            f", closes {{{codes}}}, recovered:false {{{nr}}}"
        )

    def wait(self, cond: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> bool:
        """Poll the clients until ``cond(progress)``; print progress every 2 s. False on
        timeout (the run goes on and the figures show it)."""
        deadline = time.monotonic() + timeout
        shown = 0.0
        while True:
            p = self.progress()
            if cond(p):
                self.say(self._line(what + ": done", p))
                return True
            now = time.monotonic()
            if now > deadline:
                self.say(self._line(what + f": NOT within {timeout:.0f}s", p))
                return False
            if now - shown >= 2.0:
                self.say(self._line(what, p))
                shown = now
            time.sleep(0.25)

    def _launch(self) -> Pod:
        assert self.system is not None
        pod = launch_pod(self.system, self.o.label, self.log_dir, self.env, self._args())
        wait_ready(pod, time.monotonic() + 60, self.o.label)
        return pod

    # -- the run --------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        o = self.o
        raise_nofile()
        procs = o.client_processes()
        self.say(
            f"deploy: {o.sockets} sockets over {o.pods} pods ({procs} client processes), "
            f"{o.rate:g} targeted msg/s, drain delay {o.drain_delay:g}s window "
            f"{o.drain_window:g}s, grace {o.grace_s():g}s; logs {self.log_dir}"
        )
        try:
            self.system = start_system(o.label, o.pods, self.log_dir, self.env, self._args())
            self.live = list(self.system.pods)
            self.clients = DeployLoad(procs)
            self.pub = DeployLoad(1)
            return self._run(procs)
        finally:
            for lg in (self.clients, self.pub):
                if lg is not None:
                    lg.close()
            if self.system is not None:
                self.system.stop()

    def _run(self, procs: int) -> dict[str, Any]:
        o = self.o
        assert self.system is not None and self.clients is not None and self.pub is not None
        row: dict[str, Any] = {"scenario": "deploy", "system": o.label, "run": 0}
        row.update(machine(), sockets=o.sockets, pods=o.pods, rate=o.rate, processes=procs)
        row.update(drain_delay=o.drain_delay, drain_window=o.drain_window, grace_s=o.grace_s())
        pids = [p.pid for p in self.live]
        rss0 = rss_bytes(pids)
        targets = [(HOST, p.port) for p in self.live]
        per = [list(range(k, o.sockets, procs)) for k in range(procs)]
        opened = self.clients.call(
            "open",
            per_worker=[
                {"users": per[k], "source": f"127.0.0.{2 + k}", "seed": 100 + k}
                for k in range(procs)
            ],
            targets=targets,
            welcome_timeout=o.welcome_timeout,
        )
        ok = sum(r["ok"] for r in opened)
        span = max(r["last_ready"] for r in opened) - min(r["started"] for r in opened)
        row["connected_at_start"] = ok
        row["connects_per_s_at_start"] = round(ok / max(span, 1e-6))
        row["rss_kib_per_socket"] = round((rss_bytes(pids) - rss0) / 1024 / max(ok, 1), 1)
        self.say(
            f"  {ok}/{o.sockets} connected at {row['connects_per_s_at_start']}/s; "
            f"{row['rss_kib_per_socket']} KiB per socket"
        )
        self._broadcast(row)

        self.pub.one(0, "publish", users=o.sockets, rate=o.rate, live=targets, pad=o.pad,
                     inflight=o.inflight)  # fmt: skip
        time.sleep(o.warmup)  # publishing at rest: the latency before the deploy
        rabbit = broker_pid()
        rabbit0 = cpu_seconds([rabbit]) if rabbit else 0.0
        loadgen0 = cpu_seconds(self.clients.pids + self.pub.pids)
        self.cpu_at_start = {p.pid: cpu_seconds([p.pid]) for p in self.live}
        t_deploy = time.time()
        for old in list(self.live):
            self._roll(old)
        t_kill = time.time()
        if o.kill:
            self._crash()
        settle = o.settle or max(120.0, o.sockets / 200)
        back = self.wait(lambda p: p["connected"] >= o.sockets, settle, "everyone back")
        t_back = time.time()
        time.sleep(o.tail)  # the last messages are published to settled clients
        published = self.pub.one(0, "publish_stop")
        t_end = time.time()
        pods_cpu = sum(self.cpu_final.values()) - sum(self.cpu_at_start.values())
        pods_cpu += sum(cpu_seconds([p.pid]) for p in self.live)
        row["cpu_pods_s"] = round(pods_cpu, 1)
        row["cpu_rabbitmq_s"] = round(cpu_seconds([rabbit]) - rabbit0, 1) if rabbit else None
        row["cpu_loadgen_s"] = round(cpu_seconds(self.clients.pids + self.pub.pids) - loadgen0, 1)
        row["deploy_s"] = round(t_back - t_deploy, 1)
        row["everyone_back"] = back

        accepted = published["accepted"]
        self.wait(
            lambda p: p["unique"] - o.sockets >= accepted and p["connected"] >= o.sockets,
            max(30.0, o.sockets / 200),
            f"{accepted} accepted messages delivered",
        )
        self._figures(row, published, t_deploy, t_kill, t_end)
        for pod in self.system.pods:
            for k, v in _signatures(pod).items():
                row.setdefault("pod_logs", Counter())[k] += v
        row["pod_logs"] = dict(row["pod_logs"])
        return row

    def _broadcast(self, row: dict[str, Any]) -> None:
        """One broadcast to every socket at rest: its delivery p99, and everyone's first
        message id (a ``since`` to come back with)."""
        assert self.clients is not None
        url = f"http://{HOST}:{self.live[0].port}/api/publish"
        sent = time.time()
        r = httpx.post(url, json={"broadcast": True, "data": {"t": sent}}, timeout=30)
        r.raise_for_status()
        mid = r.json()["id"]
        self.broadcast_id = mid
        n = self.o.sockets
        self.wait(lambda p: p["unique"] >= n, max(30.0, n / 500), "broadcast at rest")
        lat: list[float] = []
        for part in self.clients.call("got", mid=mid, since=sent):
            lat.extend(part)
        row["broadcast_received"] = len(lat)
        row["broadcast_p99_ms"] = _ms(percentile(lat, 0.99))

    def _roll(self, old: Pod) -> None:
        """One surge-first step: the new pod ready, then the old one terminated."""
        t = time.time()
        new = self._launch()
        self.say(f"  new pod {new.name} ready in {time.time() - t:.1f}s; SIGTERM {old.name}")
        self.live.append(new)
        self.live.remove(old)
        self._set_live()
        ev = Event("SIGTERM", old.name, old.port, time.time())
        old.proc.send_signal(signal.SIGTERM)
        ev.exit_s, ev.exit_code, self.cpu_final[old.pid], ev.killed_after_grace = reap(
            old, self.o.grace_s()
        )
        self.events.append(ev)
        self.say(
            f"  {old.name} exited {ev.exit_code} after {ev.exit_s:.1f}s"
            + (" (SIGKILL after the grace period)" if ev.killed_after_grace else "")
        )

    def _crash(self) -> None:
        """SIGKILL a pod (the first live one), then start its replacement."""
        victim = self.live[0]
        self.live.remove(victim)
        self._set_live()
        ev = Event("SIGKILL", victim.name, victim.port, time.time())
        victim.proc.kill()
        _, ev.exit_code, self.cpu_final[victim.pid], _ = reap(victim, 0)
        self.events.append(ev)
        self.say(f"  SIGKILL {victim.name}; starting a replacement")
        self.live.append(self._launch())
        self._set_live()

    # -- figures --------------------------------------------------------------

    def _figures(
        self,
        row: dict[str, Any],
        published: dict[str, Any],
        t_deploy: float,
        t_kill: float,
        t_end: float,
    ) -> None:
        assert self.clients is not None and self.pub is not None
        accepted = {mid: (user, sent, at) for mid, user, sent, at in self.pub.take(0, "published")}
        first: dict[tuple[int, str], float] = {}
        raw = 0
        attempt: list[float] = []
        upgrade: list[float] = []
        gaps: list[float] = []
        welcomes_t: list[float] = []
        for k in range(len(self.clients.pipes)):
            for idx, mid, t in self.clients.take(k, "receipts"):
                raw += 1
                key = (idx, mid)
                if key not in first or t < first[key]:
                    first[key] = t
            attempt += self.clients.take(k, "attempt_s")
            upgrade += self.clients.take(k, "upgrade_s")
            gaps += self.clients.take(k, "gap_s")
            welcomes_t += self.clients.take(k, "welcome_t")
        p = self.progress()
        phases: Counter[str] = Counter()
        lat_rest: list[float] = []
        lat_deploy: list[float] = []
        for mid, (user, _sent, at) in accepted.items():
            got = first.get((user, mid))
            if got is None:
                phases["rest" if at < t_deploy else "rolling" if at < t_kill else "crash"] += 1
            elif at < t_deploy:
                lat_rest.append(got - at)
            else:
                lat_deploy.append(got - at)
        stray = sum(1 for _, mid in first if mid not in accepted and mid != self.broadcast_id)
        statuses = published["statuses"]
        row.update(
            published=published["sent"],
            accepted=len(accepted),
            non_202=sum(v for k, v in statuses.items() if k != 202)
            + sum(published["failures"].values()),
            non_202_by=dict(
                {str(k): v for k, v in statuses.items() if k != 202}, **published["failures"]
            ),
            lost=sum(phases.values()),
            lost_by_phase=dict(phases),
            duplicates_raw=raw - len(first),
            stray=stray,
            welcomes=p["welcomes"],
            welcomes_since=p["welcomes_since"],
            recovered_false=sum(p["not_recovered"].values()),
            recovered_false_by=dict(p["not_recovered"]),
            missed_replayed=p["missed"],
            close_codes=dict(p["codes"]),
            closes_1011=p["codes"].get("1011", 0),
            closes_1013=p["codes"].get("1013", 0),
            failed_attempts=dict(p["failures"]),
            attempt_p50_s=_s(percentile(attempt, 0.5)),
            attempt_p99_s=_s(percentile(attempt, 0.99)),
            upgrade_p50_s=_s(percentile(upgrade, 0.5)),
            upgrade_p99_s=_s(percentile(upgrade, 0.99)),
            gap_p50_s=_s(percentile(gaps, 0.5)),
            gap_p99_s=_s(percentile(gaps, 0.99)),
            longest_gap_s=_s(p["longest_gap"]),
            lat_rest_p50_ms=_ms(percentile(lat_rest, 0.5)),
            lat_rest_p99_ms=_ms(percentile(lat_rest, 0.99)),
            lat_p50_ms=_ms(percentile(lat_deploy, 0.5)),
            lat_p99_ms=_ms(percentile(lat_deploy, 0.99)),
        )
        in_deploy = [t for t in welcomes_t if t_deploy <= t <= t_end]
        row["connects_per_s"] = round(len(in_deploy) / max(t_end - t_deploy, 1e-6), 1)
        row["connects_per_s_peak"] = max(Counter(int(t) for t in in_deploy).values(), default=0)
        merged: list[dict[str, Any]] = [{"affected": 0, "back_max_s": 0.0} for _ in self.events]
        wire = [(e.port, e.at) for e in self.events]
        for part in self.clients.call("back_within", events=wire):
            for m, r in zip(merged, part, strict=True):
                m["affected"] += r["affected"]
                m["back_max_s"] = max(m["back_max_s"], r["back_max_s"])
        for e, m in zip(self.events, merged, strict=True):
            e.sockets, e.back_max_s = m["affected"], _s(m["back_max_s"]) or 0.0
        row["back_max_s"] = max((e.back_max_s for e in self.events), default=None)
        row["events"] = [asdict(e) for e in self.events]
        drains = [e.exit_s for e in self.events if e.kind == "SIGTERM" and e.exit_s is not None]
        row["drain_max_s"] = _s(max(drains, default=None))
        row["drain_exit_codes"] = [e.exit_code for e in self.events if e.kind == "SIGTERM"]


FIGURES = [
    ("accepted", "accepted (202)"),
    ("non_202_by", "not accepted (status or failure)"),
    ("lost", "lost (accepted, never reached its user)"),
    ("lost_by_phase", "lost, by when accepted"),
    ("duplicates_raw", "duplicates before dedupe"),
    ("stray", "deliveries of messages not accepted"),
    ("welcomes", "welcomes"),
    ("welcomes_since", "welcomes with since"),
    ("recovered_false_by", "recovered: false, by reason"),
    ("close_codes", "close codes seen by clients"),
    ("failed_attempts", "failed attempts"),
    ("attempt_p50_s", "attempt -> welcome p50 s"),
    ("attempt_p99_s", "attempt -> welcome p99 s"),
    ("upgrade_p50_s", "  of which attempt -> 101 p50 s"),
    ("upgrade_p99_s", "  of which attempt -> 101 p99 s"),
    ("gap_p50_s", "close -> welcome p50 s"),
    ("gap_p99_s", "close -> welcome p99 s"),
    ("longest_gap_s", "longest without a connection s"),
    ("back_max_s", "back within s of SIGTERM/SIGKILL (max)"),
    ("lat_rest_p50_ms", "delivery p50 ms at rest"),
    ("lat_rest_p99_ms", "delivery p99 ms at rest"),
    ("lat_p50_ms", "delivery p50 ms during the deploy"),
    ("lat_p99_ms", "delivery p99 ms during the deploy"),
    ("connects_per_s", "connects/s during the deploy"),
    ("connects_per_s_peak", "connects/s, busiest second"),
    ("connects_per_s_at_start", "connects/s at start"),
    ("deploy_s", "deploy: first surge to everyone back s"),
    ("drain_max_s", "longest drain s"),
    ("drain_exit_codes", "drained pods' exit codes"),
    ("cpu_pods_s", "CPU s, pods (during the deploy)"),
    ("cpu_rabbitmq_s", "CPU s, RabbitMQ (during the deploy)"),
    ("cpu_loadgen_s", "CPU s, load generators"),
    ("rss_kib_per_socket", "KiB per socket at rest"),
    ("broadcast_p99_ms", "broadcast at rest p99 ms"),
    ("pod_logs", "pod log lines"),
]


def table(row: dict[str, Any]) -> str:
    """The figures of one run, one per line, and each pod that left."""
    head = f"deploy: {row['sockets']} sockets, {row['pods']} pods, {row['rate']:g} msg/s"
    lines = [head, "-" * len(head)]
    for key, name in FIGURES:
        v = row.get(key)
        if isinstance(v, dict):
            v = ", ".join(f"{k} {n}" for k, n in v.items() if n) or "0"
        lines.append(f"{name:<42} {'-' if v is None else v}")
    for e in row.get("events", []):
        lines.append(
            f"{e['kind']:<8} {e['pod']}: {e['sockets']} clients, exit {e['exit_code']}"
            + (f" after {e['exit_s']:.1f}s" if e["kind"] == "SIGTERM" else "")
            + (" (SIGKILL after grace)" if e["killed_after_grace"] else "")
            + f", all back within {e['back_max_s']}s"
        )
    return "\n".join(lines)


def run(
    opts: Options,
    log_dir: Path,
    env: dict[str, str] | None,
    emit: Callable[[dict[str, Any]], None],
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """One run: its row emitted, its table printed."""
    row = Deploy(opts, log_dir, env, say).run()
    emit(row)
    say(table(row))
    return row


def main(argv: list[str] | None = None) -> int:
    from .__main__ import HERE, _git, _snapshot

    d = Options()
    p = argparse.ArgumentParser(prog="python -m bench.deploy", description=__doc__.split("\n")[0])
    p.add_argument("--sockets", type=int, default=d.sockets)
    p.add_argument("--pods", type=int, default=d.pods)
    p.add_argument("--rate", type=float, default=d.rate, help="targeted messages/s")
    p.add_argument("--processes", type=int, default=0, help="client processes (0: by size)")
    p.add_argument("--drain-delay", type=float, default=d.drain_delay)
    p.add_argument("--drain-window", type=float, default=d.drain_window)
    p.add_argument("--grace", type=float, default=0.0, help="SIGTERM to SIGKILL, s")
    p.add_argument("--warmup", type=float, default=d.warmup)
    p.add_argument("--no-kill", action="store_true", help="skip the SIGKILL of one pod")
    p.add_argument("--welcome-timeout", type=float, default=d.welcome_timeout)
    p.add_argument("--clarion-rev", default=None, help="git revision of service/ to measure")
    p.add_argument("--out", default=None, help="JSON lines file (default results/<date>.jsonl)")
    p.add_argument("--tag", default="")
    a = p.parse_args(argv)
    opts = Options(
        sockets=a.sockets,
        pods=a.pods,
        rate=a.rate,
        processes=a.processes,
        drain_delay=a.drain_delay,
        drain_window=a.drain_window,
        grace=a.grace,
        warmup=a.warmup,
        kill=not a.no_kill,
        welcome_timeout=a.welcome_timeout,
    )
    log_dir = Path(tempfile.mkdtemp(prefix="clarion-deploy-"))
    env: dict[str, str] = {}
    source = _git("rev-parse", "HEAD")[:10]
    if _git("status", "--porcelain", "--", "service"):
        source += "+dirty"
    if a.clarion_rev:
        source = _snapshot(a.clarion_rev, log_dir)[:10] + f" ({a.clarion_rev})"
        env["PYTHONPATH"] = str(log_dir / "service")
    out = Path(a.out) if a.out else HERE / "results" / f"{datetime.date.today().isoformat()}.jsonl"
    run_id = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    def emit(row: dict[str, Any]) -> None:
        row.update(run_id=run_id, clarion=source, tag=a.tag, quick=False)
        with open(out, "a") as f:
            f.write(json.dumps(row) + "\n")

    run(opts, log_dir, env, emit, lambda s: print(s, flush=True))
    print(f"JSON lines: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
