"""The Grafana dashboard: only real metrics, and every gateway panel has data in a real Prometheus.

Two real `clarion serve` processes share a RabbitMQ vhost; live WebSocket
clients and a publisher keep them busy; Debian's Prometheus scrapes them every
second with the labels a cluster would add (namespace, gateway, pod), and each
panel query, with the Grafana variables filled in, must return numbers.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from websockets.sync.client import ClientConnection, connect

from clarion import names
from tests.support import GatewayProcess, PodFactory, Vhost, free_port, wait_for_sync

from .helpers import DASHBOARD

TEST_NAMESPACE = "clarion-demo"
TEST_GATEWAY = "clarion"
#: Grafana's $__rate_interval is at least four scrape intervals; the test scrapes every 1 s.
RATE_INTERVAL = "5s"
#: Operator metrics as they appear on the wire (counters get _total).
OPERATOR_METRICS = {
    names.M_OP_DESIRED,
    names.M_OP_OBSERVED,
    names.M_OP_SCALE_EVENTS + "_total",
    names.M_OP_ORPHANS_DELETED + "_total",
}
METRIC_RE = re.compile(r"\b(clarion_[a-z0-9_]+)\b")
#: PromQL words that are not metric names.
PROMQL_WORDS = {"by", "le", "sum", "max", "rate", "count", "increase", "histogram_quantile"}


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for p in dash["panels"]:
        if p["type"] == "row":
            out.extend(p.get("panels") or [])
        else:
            out.append(p)
    return out


def expressions(dash: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query: panel targets and template variables."""
    exprs = [(p["title"], t["expr"]) for p in panels(dash) for t in p.get("targets", [])]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            q = var["query"]
            exprs.append((f"${var['name']}", q["query"] if isinstance(q, dict) else q))
    return exprs


def gateway_variable() -> dict[str, Any]:
    return dict(next(v for v in dashboard()["templating"]["list"] if v["name"] == "gateway"))


def gateway_of(pod: str) -> str | None:
    """What Grafana makes of a pod name with the gateway variable's regex."""
    m = re.fullmatch(gateway_variable()["regex"].strip("/"), pod)
    return m.group(1) if m else None


def test_the_gateway_comes_from_pod_names_not_from_relabeling() -> None:
    """Deployment pods are <gateway>-<hash>-<id>; a gateway's selector takes only its own."""
    var = gateway_variable()
    assert var["query"]["query"].endswith(", pod)")
    assert gateway_of("push-7d4f9c8b5-x2x4q") == "push"
    assert gateway_of("push-eu-7d4f9c8b5-x2x4q") == "push-eu"
    assert gateway_of("push") is None
    selector = 'pod=~"$gateway-[a-z0-9]+-[a-z0-9]+"'
    for title, expr in expressions(dashboard()):
        if "clarion_operator" in expr or title.startswith("$"):
            continue
        assert "gateway=" not in expr, title  # a label only relabeling would add
        assert selector in expr, title
    pattern = selector.split('"')[1].replace("$gateway", "push")
    assert re.fullmatch(pattern, "push-7d4f9c8b5-x2x4q")
    assert not re.fullmatch(pattern, "push-eu-7d4f9c8b5-x2x4q")  # the neighbour gateway


def metric_names(expr: str) -> set[str]:
    return set(METRIC_RE.findall(expr))


def substitute(expr: str) -> str:
    return (
        expr.replace("$__rate_interval", RATE_INTERVAL)
        .replace("$namespace", TEST_NAMESPACE)
        .replace("$gateway", TEST_GATEWAY)
    )


def exposed_names(metrics_text: str) -> set[str]:
    """Sample names on a /metrics page."""
    found = set()
    for line in metrics_text.splitlines():
        if line and not line.startswith("#"):
            found.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return found


# -- static checks ------------------------------------------------------------------


def test_dashboard_shape() -> None:
    dash = dashboard()
    assert 36 <= dash["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert "namespace" in variables["namespace"]["definition"]
    assert "$namespace" in variables["gateway"]["definition"]
    titles = {p["title"] for p in panels(dash)}
    assert titles >= {
        "Total connections",
        "Connections per pod",
        "Connects and disconnects per second",
        "Stream connections by transport",
        "Messages per second",
        "Delivery latency",
        "Dropped messages per second",
        "Broker connected per pod",
        "Desired vs actual replicas",
        "Orphan queues deleted",
        "Routing keys bound",
        "Bind latency p99",
        "Bind errors/s",
        "Replays by result",
        "New sockets refused (admission)",
        "History read p99",
        "Fast paths: consumed and written by path",
        "Proxy calls by proxy and result",
        "Proxy call mean latency",
        "Refreshes by result",
        "Subscriptions refused by reason",
        "Per-user and namespace limits",
    }
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in panels(dash):
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}"
    latency = next(p for p in panels(dash) if p["title"] == "Delivery latency")
    quantiles = [
        re.search(r"histogram_quantile\(([0-9.]+),", t["expr"]) for t in latency["targets"]
    ]
    assert [float(m.group(1)) for m in quantiles if m] == [0.5, 0.95, 0.99]
    assert all(names.M_DELIVERY_LATENCY + "_bucket" in t["expr"] for t in latency["targets"])
    routing = {p["title"]: [t["expr"] for t in p["targets"]] for p in panels(dash)}
    bound, wide = routing["Routing keys bound"]
    assert bound.startswith(f"sum by (pod) ({names.M_BINDINGS}{{")
    assert wide.startswith(f"max by (pod) ({names.M_ROUTING_WIDE}{{")
    (bind,) = routing["Bind latency p99"]
    assert bind.startswith("histogram_quantile(0.99, sum by (le) (rate(")
    assert names.M_BIND_SECONDS + "_bucket{" in bind
    (errors,) = routing["Bind errors/s"]
    assert errors.startswith(f"sum(rate({names.M_BIND_ERRORS}_total{{")


def test_dashboard_layout_has_no_overlaps() -> None:
    cells: dict[tuple[int, int], str] = {}
    for p in dashboard()["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = p["title"]


def test_dashboard_names_only_metrics_from_names_py() -> None:
    declared = {v for k, v in vars(names).items() if k.startswith("M_") and isinstance(v, str)}
    suffixes = ("", "_total", "_bucket", "_sum", "_count")
    for title, expr in expressions(dashboard()):
        for metric in metric_names(expr):
            assert any(metric == base + s for base in declared for s in suffixes), (
                f"{title}: {metric} is not in clarion/names.py"
            )


def test_operator_metric_names_match_the_operator() -> None:
    """What the operator really exports, if its package is there to ask."""
    try:
        from clarion_operator.metrics import OperatorMetrics
    except ImportError as exc:  # pragma: no cover - the operator is built in parallel
        pytest.skip(f"clarion_operator.metrics not importable: {exc}")
    from prometheus_client import generate_latest

    m = OperatorMetrics()
    for metric in (m.desired, m.observed, m.orphans_deleted):
        metric.labels(gateway="ns/gw")
    m.scale_events.labels(gateway="ns/gw", direction="up")
    exported = exposed_names(generate_latest(m.registry).decode())
    assert exported >= OPERATOR_METRICS


# -- live: real gateways, real Prometheus ------------------------------------------


class Traffic:
    """Live sockets on pod A, publishes through pod B, a little connection churn (reconnects
    with since)."""

    def __init__(self, a: GatewayProcess, b: GatewayProcess) -> None:
        self.a, self.b = a, b
        self.stop = threading.Event()
        self.received = 0
        self.published = 0
        self.errors: list[str] = []
        self.sockets = contextlib.ExitStack()
        self.threads: list[threading.Thread] = []

    def start(self) -> Traffic:
        for user in ("u1", "u2"):
            ws = self.sockets.enter_context(
                connect(f"{self.a.ws_url}?user={user}", open_timeout=10)
            )
            ws.recv(timeout=10)  # welcome
            self.threads.append(threading.Thread(target=self._read, args=(ws,), daemon=True))
        self.sockets.enter_context(connect(f"{self.b.ws_url}?user=u3", open_timeout=10))
        self.threads.append(threading.Thread(target=self._publish, daemon=True))
        for t in self.threads:
            t.start()
        return self

    def _read(self, ws: ClientConnection) -> None:
        while not self.stop.is_set():
            try:
                ws.recv(timeout=0.5)
                self.received += 1
            except TimeoutError:
                continue
            except Exception:
                return

    def _publish(self) -> None:
        with httpx.Client(base_url=self.b.http_url, timeout=5) as client:
            n = 0
            while not self.stop.wait(0.05):
                n += 1
                try:
                    r = client.post("/api/publish", json={"user": "u1", "data": {"n": n}})
                    if r.status_code == 202:
                        self.published += 1
                    else:
                        self.errors.append(f"publish {r.status_code}: {r.text}")
                    if n % 10 == 0:  # a connect and a disconnect on pod B, a new user: a bind
                        # (with since, as a reconnecting client: a replay, a history read)
                        since = r.json()["id"] if r.status_code == 202 else None
                        query = f"&since={since}" if since else ""
                        with connect(f"{self.b.ws_url}?user=churn{n}{query}", open_timeout=5) as ws:
                            ws.recv(timeout=5)
                except Exception as exc:
                    self.errors.append(repr(exc))

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(5)
        self.sockets.close()


class Prometheus:
    """Debian's prometheus on a temp dir, scraping the given pods every second."""

    def __init__(self, workdir: Path, pods: list[GatewayProcess]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        static = [
            {
                "targets": [f"{p.host}:{p.port}"],
                # What every scrape setup adds on a cluster (annotation-based pod
                # discovery and the ServiceMonitor alike): no relabeling-only label.
                "labels": {"namespace": TEST_NAMESPACE, "pod": p.pod_name},
            }
            for p in pods
        ]
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "clarion", "static_configs": static}],
        }
        self.config = workdir / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(config))
        self.data = workdir / "data"
        self.log = workdir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Prometheus:
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.fail(
                "prometheus not installed (apt-get install prometheus; scripts/services.sh)"
            )
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    binary,
                    f"--config.file={self.config}",
                    f"--storage.tsdb.path={self.data}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--storage.tsdb.retention.time=1h",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for_sync(self._ready, 20, 0.1, "prometheus ready")
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"prometheus exited: {self.log.read_text()[-2000:]}")
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def query(self, expr: str) -> list[dict[str, Any]]:
        r = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=5)
        r.raise_for_status()
        body = r.json()
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def label_values(self, label: str, match: str) -> list[str]:
        r = httpx.get(f"{self.url}/api/v1/label/{label}/values", params={"match[]": match})
        r.raise_for_status()
        return list(r.json()["data"])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture(scope="module")
def pods(module_vhost: Vhost, module_pod_factory: PodFactory) -> list[GatewayProcess]:
    return module_pod_factory(
        names=[f"{TEST_GATEWAY}-{suffix}" for suffix in ("7d4f9-a1", "7d4f9-b2")],
        amqp_url=module_vhost.amqp_url,
        # Routed: the churn's new users keep binding (the bind panels have data).
        args=["--auth", "none", "--allow-client-publish", "--routing", "direct"],
        timeout=30,
    )


def test_every_metric_in_the_dashboard_exists(pods: list[GatewayProcess]) -> None:
    """Each name is on a running gateway's /metrics, or is one the operator exports."""
    exposed = exposed_names(httpx.get(f"{pods[0].http_url}/metrics", timeout=5).text)
    for title, expr in expressions(dashboard()):
        for metric in metric_names(expr) - PROMQL_WORDS:
            assert metric in exposed or metric in OPERATOR_METRICS, (
                f"{title!r}: {metric} is neither on a gateway's /metrics nor an operator metric"
            )


def _is_number(sample: dict[str, Any]) -> bool:
    return math.isfinite(float(sample["value"][1]))


def test_every_gateway_panel_has_data_in_prometheus(
    pods: list[GatewayProcess], tmp_path: Path
) -> None:
    dash = dashboard()
    gateway_queries = [
        (title, substitute(expr))
        for title, expr in expressions(dash)
        if not title.startswith("$")
        and metric_names(expr)
        and not any(m in OPERATOR_METRICS for m in metric_names(expr))
    ]
    assert len(gateway_queries) >= 10
    traffic = Traffic(*pods).start()
    prom = Prometheus(tmp_path, pods).start()
    try:
        missing: dict[str, str] = {}

        def all_have_data() -> bool:
            missing.clear()
            for title, expr in gateway_queries:
                result = prom.query(expr)
                if not result or not all(_is_number(s) for s in result):
                    missing[title] = f"{expr} -> {result}"
            return not missing

        try:
            wait_for_sync(all_have_data, 45, 0.5, "data for every gateway panel")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nno data yet: {json.dumps(missing, indent=1)}") from None
        # The shared broker may hiccup under other tests' load; the traffic must mostly flow.
        assert traffic.published > 10 * len(traffic.errors), traffic.errors[:5]
        assert traffic.received > 0

        # Per-pod panels show both pods; the latency quantiles are real numbers.
        per_pod = prom.query(
            substitute(f'sum by (pod) ({names.M_CONNECTIONS}{{namespace="$namespace"}})')
        )
        assert {s["metric"]["pod"] for s in per_pod} == {p.pod_name for p in pods}
        # The template variables find the namespace and the gateway.
        assert TEST_NAMESPACE in prom.label_values("namespace", names.M_CONNECTIONS)
        match = f'{names.M_CONNECTIONS}{{namespace="{TEST_NAMESPACE}"}}'
        assert {gateway_of(pod) for pod in prom.label_values("pod", match)} == {TEST_GATEWAY}
    finally:
        traffic.close()
        prom.stop()
