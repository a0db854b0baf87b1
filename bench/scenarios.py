"""The scenarios S1-S5, each returning one result row per run.

A row is a flat dict (one JSON line): scenario, system, run, sizes, and the
metrics of that scenario. Medians and ratios are computed from rows later
(``bench.report``), never here.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path
from typing import Any

from . import publish
from .loadgen import LoadGen
from .servers import System, broker_pid, cpu_seconds, machine, rss_bytes, start_system


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    k = min(len(values) - 1, max(0, round(q * (len(values) - 1))))
    return values[k]


def _lat(row: dict[str, Any], lat: list[float], prefix: str = "lat") -> None:
    p50 = percentile(lat, 0.50)
    p99 = percentile(lat, 0.99)
    row[f"{prefix}_p50_ms"] = None if p50 is None else round(p50 * 1000, 2)
    row[f"{prefix}_p99_ms"] = None if p99 is None else round(p99 * 1000, 2)


def _base(scenario: str, system: str, run: int, **extra: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"scenario": scenario, "system": system, "run": run}
    row.update(machine())
    row.update(extra)
    return row


class Bench:
    """Shared knobs of one benchmark invocation."""

    def __init__(
        self,
        lg: LoadGen,
        log_dir: Path,
        reps: int,
        pad: int,
        env: dict[str, str] | None = None,
        emit: Any = None,
    ) -> None:
        self.lg = lg
        self.log_dir = log_dir
        self.reps = reps
        self.pad = pad
        self.env = env
        self._emit = emit
        self.broker = broker_pid()
        self.profile_dir: Path | None = None
        #: Environment per system label (``clarion@REV`` runs another revision).
        self.envs: dict[str, dict[str, str]] = {}

    def _profile(self, system: System, name: str) -> Any:
        """Start py-spy on the first pod (only with ``--profile``); stop it with ``.stop()``."""
        if self.profile_dir is None:
            return None
        from .profile import PySpy

        return PySpy(system.pods[0].pid, self.profile_dir / f"{name}.txt").start()

    def emit(self, row: dict[str, Any]) -> None:
        if self._emit is not None:
            self._emit(row)

    def start(self, label: str, pods: int) -> System:
        return start_system(label, pods, self.log_dir, self.envs.get(label, self.env))

    # -- S1 ------------------------------------------------------------------

    def s1_broadcast(
        self,
        label: str,
        sizes: list[int],
        deliveries: int,
        pods: int = 2,
        deflate: bool = False,
        reps: int | None = None,
        paced: bool = True,
        via: str = "amqp",
        scenario: str = "S1",
        inflight: int = 4,
        rounds: int = 1,
    ) -> list[dict[str, Any]]:
        """Bursts of broadcasts at growing socket counts on ``pods`` pods.

        Per size: ``reps`` bursts of ``deliveries / sockets`` messages as fast
        as the publisher goes (deliveries/s, CPU per delivery, latency under
        load), then 20 broadcasts paced at 10/s (the fan-out latency of one
        message when nothing queues). ``via="amqp"`` publishes straight into
        the system's fanout exchange; ``via="http"`` POSTs each broadcast to
        ``/api/publish`` back to back, ``inflight`` requests at a time, so the
        pods' CPU includes the API and the publish with its confirm. A run's
        CPU window holds ``rounds`` such bursts (more CPU time against psutil's
        10 ms tick, while each burst's latencies stay a small reply from the
        load generators).
        """
        reps = reps or self.reps
        lg = self.lg
        system = self.start(label, pods)
        rows: list[dict[str, Any]] = []
        try:
            kind = "clarion" if system.kind == "clarion" else system.kind
            connected = 0
            for sockets in sizes:
                res = lg.connect(
                    system.addrs,
                    system.path,
                    system.dialect,
                    sockets - connected,
                    deflate=deflate,
                    user_offset=connected,
                )
                connected += res["ok"]
                time.sleep(0.5)
                messages = max(10, deliveries // sockets)
                spy = self._profile(system, f"{scenario}-{label}-{sockets}")
                for run in range(reps):
                    cpu0 = cpu_seconds(system.pids)
                    b0 = cpu_seconds([self.broker]) if self.broker else 0.0
                    # ``rounds`` bursts in one CPU window; the load generators' stats
                    # are fetched (and reset) after each, while the pods are idle.
                    got = expected = accepted = 0
                    elapsed = publish_s = 0.0
                    lat: list[float] = []
                    answered: list[float] = []
                    kinds: dict[str, int] = {}
                    for _ in range(rounds):
                        lg.call("reset")
                        if via == "http":
                            api = asyncio.run(
                                publish.http_burst(system.addrs, messages, self.pad, inflight)
                            )
                            first, pub_last, ok = api["first"], api["last"], api["accepted"]
                            answered += api["answered"]
                            for k, v in api["error_kinds"].items():
                                kinds[k] = kinds.get(k, 0) + v
                        else:
                            first, pub_last = asyncio.run(
                                publish.amqp_burst(system.amqp_url, kind, messages, self.pad)
                            )
                            ok = messages
                        accepted += ok
                        expected += connected * ok
                        lg.wait_received(connected * ok)
                        n, last, burst_lat = lg.stats()
                        got += n
                        lat += burst_lat
                        elapsed += max(1e-6, last - first)
                        publish_s += pub_last - first
                    cpu1 = cpu_seconds(system.pids)
                    b1 = cpu_seconds([self.broker]) if self.broker else 0.0
                    row = _base(
                        scenario,
                        label,
                        run,
                        pods=pods,
                        sockets=connected,
                        connect_failed=res["failed"],
                        via=via,
                        messages=messages * rounds,
                        expected=expected,
                        delivered=got,
                        lost=expected - got,
                        elapsed_s=round(elapsed, 3),
                        deliveries_per_s=round(got / elapsed),
                        cpu_s=round(cpu1 - cpu0, 3),
                        cpu_us_per_delivery=round((cpu1 - cpu0) / max(1, got) * 1e6, 2),
                        broker_cpu_s=round(b1 - b0, 3),
                        publish_s=round(publish_s, 3),
                        deflate=deflate,
                        rss_mib=round(rss_bytes(system.pids) / 2**20, 1),
                    )
                    _lat(row, lat)
                    if via == "http":
                        row["http_errors"] = messages * rounds - accepted
                        row["error_kinds"] = kinds or None
                        row["inflight"] = inflight
                        _lat(row, answered, "api")  # request sent -> 202
                    if rounds > 1:
                        row["rounds"] = rounds
                    rows.append(row)
                    self.emit(row)
                if spy is not None:
                    spy.stop()
                if paced:
                    lg.call("reset")
                    count = 20
                    first, _ = asyncio.run(
                        publish.amqp_burst(system.amqp_url, kind, count, self.pad, rate=10.0)
                    )
                    lg.wait_received(connected * count)
                    got, _, lat = lg.stats()
                    row = _base(
                        "S1-paced",
                        label,
                        0,
                        pods=pods,
                        sockets=connected,
                        messages=count,
                        expected=connected * count,
                        delivered=got,
                        lost=connected * count - got,
                        deflate=deflate,
                    )
                    _lat(row, lat)
                    rows.append(row)
                    self.emit(row)
        finally:
            lg.call("close_all")
            system.stop()
        return rows

    def s1_api(
        self, label: str, sizes: list[int], deliveries: int, rounds: int = 3
    ) -> list[dict[str, Any]]:
        """S1 as a backend drives it: Clarion's broadcasts through ``POST /api/publish``.

        Systems with an HTTP API get each broadcast as one request, back to back
        with a few in flight; ``raw`` has none and is published to over AMQP, the
        floor measured beside it (scenario ``S1-API``, field ``via``).
        """
        via = "amqp" if label.startswith("raw") else "http"
        return self.s1_broadcast(
            label, sizes, deliveries, paced=False, via=via, scenario="S1-API", rounds=rounds
        )

    # -- S2 ------------------------------------------------------------------

    def s2_targeted(
        self,
        label: str,
        sockets: int,
        rate: float,
        duration: float,
        pods: int = 2,
    ) -> list[dict[str, Any]]:
        """Messages to random users at a fixed rate through the HTTP publish API."""
        lg = self.lg
        system = self.start(label, pods)
        rows: list[dict[str, Any]] = []
        try:
            res = lg.connect(system.addrs, system.path, system.dialect, sockets)
            # One publish per pod first: python-socketio opens its publisher
            # connection lazily, and concurrent first emits race it (they fail
            # with "'NoneType' object has no attribute 'publish'").
            for addr in system.addrs:
                asyncio.run(publish.http_paced([addr], sockets, 10.0, 0.1, self.pad))
            time.sleep(0.5)
            spy = self._profile(system, f"S2-{label}")
            for run in range(self.reps):
                lg.call("reset")
                cpu0 = cpu_seconds(system.pids)
                out = asyncio.run(
                    publish.http_paced(
                        system.addrs, sockets, rate, duration, self.pad, seed=run + 1
                    )
                )
                expected = out["accepted"]
                lg.wait_received(expected, idle_timeout=3.0)
                cpu1 = cpu_seconds(system.pids)
                got, _, lat = lg.stats()
                row = _base(
                    "S2",
                    label,
                    run,
                    pods=pods,
                    sockets=res["ok"],
                    rate=rate,
                    sent=out["sent"],
                    accepted=out["accepted"],
                    http_errors=out["sent"] - out["accepted"],
                    error_kinds=out["error_kinds"] or None,
                    expected=out["sent"],
                    delivered=got,
                    lost=out["sent"] - got,
                    publish_elapsed_s=round(out["last"] - out["first"], 3),
                    cpu_s=round(cpu1 - cpu0, 3),
                    cpu_us_per_message=round((cpu1 - cpu0) / max(1, got) * 1e6, 1),
                )
                _lat(row, lat)
                # Due -> the HTTP answer (202 after the broker's confirm, for Clarion).
                _lat(row, out["answered"], "api")
                rows.append(row)
                self.emit(row)
            if spy is not None:
                spy.stop()
        finally:
            lg.call("close_all")
            system.stop()
        return rows

    # -- S3 + S4 -------------------------------------------------------------

    def s3_s4_idle(
        self,
        label: str,
        sockets: int,
        reps: int | None = None,
        deflate: bool = False,
        concurrency: int = 100,
    ) -> list[dict[str, Any]]:
        """A fresh pod per run: a connect storm of ``sockets``, then RSS per idle socket."""
        lg = self.lg
        rows: list[dict[str, Any]] = []
        for run in range(reps or self.reps):
            system = self.start(label, 1)
            try:
                # Warm the code paths (imports, first allocations) before the baseline.
                lg.connect(system.addrs, system.path, system.dialect, 20, deflate=deflate)
                lg.call("close_all")
                time.sleep(0.5)
                rss0 = rss_bytes(system.pids)
                cpu0 = cpu_seconds(system.pids)
                spy = self._profile(system, f"S4-{label}") if run == 0 else None
                res = lg.connect(
                    system.addrs,
                    system.path,
                    system.dialect,
                    sockets,
                    concurrency=concurrency,
                    deflate=deflate,
                    user_offset=100,
                )
                cpu1 = cpu_seconds(system.pids)
                if spy is not None:
                    spy.stop()
                storm = max(1e-6, res["last_ready"] - res["started"])
                time.sleep(1.5)
                rss1 = rss_bytes(system.pids)
                row = _base(
                    "S3/S4",
                    label,
                    run,
                    sockets=res["ok"],
                    connect_failed=res["failed"],
                    deflate=deflate,
                    connect_s=round(storm, 3),
                    connects_per_s=round(res["ok"] / storm),
                    cpu_ms_per_connect=round((cpu1 - cpu0) / max(1, res["ok"]) * 1e3, 3),
                    rss_base_mib=round(rss0 / 2**20, 1),
                    rss_kib_per_socket=round((rss1 - rss0) / 1024 / max(1, res["ok"]), 1),
                )
                rows.append(row)
                self.emit(row)
            finally:
                lg.call("close_all")
                system.stop()
        return rows

    # -- S5 ------------------------------------------------------------------

    def s5_capacity(self, label: str, sockets: int, messages: int = 3) -> list[dict[str, Any]]:
        """One pod holds ``sockets`` and still delivers broadcasts to all of them."""
        lg = self.lg
        system = self.start(label, 1)
        try:
            rss0 = rss_bytes(system.pids)
            res = lg.connect(system.addrs, system.path, system.dialect, sockets, concurrency=200)
            time.sleep(1.0)
            rss1 = rss_bytes(system.pids)
            lg.call("reset")
            cpu0 = cpu_seconds(system.pids)
            asyncio.run(
                publish.amqp_burst(system.amqp_url, system.kind, messages, self.pad, rate=2.0)
            )
            expected = res["ok"] * messages
            lg.wait_received(expected)
            cpu1 = cpu_seconds(system.pids)
            got, _, lat = lg.stats()
            row = _base(
                "S5",
                label,
                0,
                sockets=res["ok"],
                connect_failed=res["failed"],
                connects_per_s=round(res["ok"] / max(1e-6, res["last_ready"] - res["started"])),
                messages=messages,
                expected=expected,
                delivered=got,
                lost=expected - got,
                rss_mib=round(rss1 / 2**20, 1),
                rss_kib_per_socket=round((rss1 - rss0) / 1024 / max(1, res["ok"]), 1),
                cpu_us_per_delivery=round((cpu1 - cpu0) / max(1, got) * 1e6, 2),
            )
            _lat(row, lat)
            self.emit(row)
            return [row]
        finally:
            lg.call("close_all")
            system.stop()

    # -- broker baseline -------------------------------------------------------

    def broker_baseline(self, messages: int, consumers: int = 2) -> list[dict[str, Any]]:
        """aio-pika publish -> consume through a fanout exchange, ``consumers`` pods."""
        from .servers import Vhost

        rows: list[dict[str, Any]] = []
        vhost = Vhost().create()
        cons = LoadGen(consumers)
        try:
            cons.call(
                "amqp_consume",
                per_worker=[{"queue": f"bench.broker.{k}"} for k in range(consumers)],
                url=vhost.amqp_url,
                exchange=publish.BROKER_EXCHANGE,
            )
            for run in range(self.reps):
                cons.call("reset")
                cpu0 = cpu_seconds(cons.pids)
                b0 = cpu_seconds([self.broker]) if self.broker else 0.0
                first, _ = asyncio.run(
                    publish.amqp_burst(vhost.amqp_url, "broker", messages, self.pad)
                )
                expected = messages * consumers
                cons.wait_received(expected)
                cpu1 = cpu_seconds(cons.pids)
                b1 = cpu_seconds([self.broker]) if self.broker else 0.0
                got, last, lat = cons.stats()
                elapsed = max(1e-6, last - first)
                row = _base(
                    "S1",
                    "broker",
                    run,
                    pods=consumers,
                    sockets=0,
                    messages=messages,
                    expected=expected,
                    delivered=got,
                    lost=expected - got,
                    elapsed_s=round(elapsed, 3),
                    deliveries_per_s=round(got / elapsed),
                    cpu_s=round(cpu1 - cpu0, 3),
                    cpu_us_per_delivery=round((cpu1 - cpu0) / max(1, got) * 1e6, 2),
                    broker_cpu_s=round(b1 - b0, 3),
                )
                _lat(row, lat)
                rows.append(row)
                self.emit(row)
        finally:
            cons.close()
            vhost.delete()
        return rows


def median(rows: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(vals) if vals else None
