"""The in-chart broker across upgrades and node drains (issue 23: items 2, 6, 7, 10).

Rendered with the real helm: a chart release must not restart the broker, a node
must stop one at a time without costing a quorum, no budget may block a drain,
and the broker's probes must be cheap. tests/ha/test_prestop.py runs the preStop
command against a real three-node cluster.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import yaml

from .helpers import (
    CHART,
    KUBE_VERSION,
    NAMESPACE,
    RELEASE,
    Doc,
    find,
    kubernetes_validate,
    load_docs,
    one,
    render,
    run,
    tool,
)

pytestmark = pytest.mark.timeout(60)

#: Fixed credentials: a generated password would differ between two renders.
FIXED = ["rabbitmq.password=kept", "rabbitmq.erlangCookie=KEPTCOOKIE"]
BROKER = f"{RELEASE}-rabbitmq"


def render_chart(chart: Path, sets: list[str]) -> list[Doc]:
    cmd = [tool("helm"), "template", RELEASE, str(chart), "--namespace", NAMESPACE]
    cmd += ["--kube-version", KUBE_VERSION]
    for s in sets:
        cmd += ["--set", s]
    return load_docs(run(cmd).stdout)


def pod_template(docs: list[Doc]) -> str:
    return yaml.safe_dump(one(docs, "StatefulSet", BROKER)["spec"]["template"], sort_keys=True)


def other_version(tmp_path: Path) -> Path:
    """The same chart as the next release would be: another version and appVersion."""
    copy = tmp_path / "clarion"
    shutil.copytree(CHART, copy)
    meta = yaml.safe_load((copy / "Chart.yaml").read_text())
    meta["version"], meta["appVersion"] = "9.8.7", "9.8.7"
    (copy / "Chart.yaml").write_text(yaml.safe_dump(meta))
    return copy


@pytest.mark.parametrize("replicas", ["1", "3"])
def test_a_chart_release_leaves_the_broker_pods_alone(tmp_path: Path, replicas: str) -> None:
    sets = [*FIXED, f"rabbitmq.replicas={replicas}"]
    before = render_chart(CHART, sets)
    after = render_chart(other_version(tmp_path), sets)
    assert pod_template(before) == pod_template(after)
    # The gateway's image follows appVersion: only the gateway rolls.
    assert one(before, "WebSocketGateway")["spec"] != one(after, "WebSocketGateway")["spec"]


def test_more_nodes_restart_none_of_the_running_ones() -> None:
    three = render([*FIXED, "rabbitmq.replicas=3"])
    five = render([*FIXED, "rabbitmq.replicas=5"])
    assert pod_template(three) == pod_template(five)
    assert one(five, "StatefulSet", BROKER)["spec"]["replicas"] == 5


def test_a_broker_setting_still_rolls_the_broker() -> None:
    base = pod_template(render([*FIXED, "rabbitmq.replicas=3"]))
    for change in ("rabbitmq.memoryHighWatermark=300MiB", "rabbitmq.netTicktime=20"):
        assert pod_template(render([*FIXED, "rabbitmq.replicas=3", change])) != base, change


def broker_container(docs: list[Doc]) -> Doc:
    (c,) = one(docs, "StatefulSet", BROKER)["spec"]["template"]["spec"]["containers"]
    return dict(c)


def test_a_cluster_node_stops_only_while_the_others_keep_quorum() -> None:
    docs = render([*FIXED, "rabbitmq.replicas=3", "rabbitmq.terminationGracePeriodSeconds=300"])
    kubernetes_validate(docs)
    pod = one(docs, "StatefulSet", BROKER)["spec"]["template"]["spec"]
    command = " ".join(broker_container(docs)["lifecycle"]["preStop"]["exec"]["command"])
    await_at = command.index("rabbitmq-upgrade -q await_online_quorum_plus_one -t 210")
    assert await_at < command.index("&& rabbitmq-upgrade -q drain -t 60")
    # The wait and the drain fit in the grace period, with time left for the node to stop.
    assert pod["terminationGracePeriodSeconds"] == 300 >= 210 + 60 + 30
    # One node has no one to wait for.
    single = broker_container(render(FIXED))
    assert "preStop" not in single["lifecycle"]


def test_the_broker_probes_are_cheap() -> None:
    """A TCP readiness check and no liveness probe: no Erlang VM per probe."""
    for sets in (FIXED, [*FIXED, "rabbitmq.replicas=3"]):
        c = broker_container(render(sets))
        assert c["readinessProbe"] == {**c["readinessProbe"], "tcpSocket": {"port": "amqp"}}
        assert "livenessProbe" not in c and "startupProbe" not in c
        assert not [k for k, v in c.items() if k.endswith("Probe") and "exec" in v]


def allowed_evictions(pdb: Doc, pods: int) -> int:
    """What the disruption controller allows with every pod healthy."""
    spec = pdb["spec"]

    def count(value: int | str, round_up: bool) -> int:
        if isinstance(value, str):
            share = pods * int(value.rstrip("%")) / 100
            return math.ceil(share) if round_up else math.floor(share)
        return value

    if "maxUnavailable" in spec:
        return count(spec["maxUnavailable"], round_up=True)
    return pods - count(spec["minAvailable"], round_up=True)


@pytest.mark.parametrize(
    "sets",
    [
        [],
        ["operator.replicas=1"],
        ["operator.replicas=1", "operator.podDisruptionBudget.minAvailable=50%"],
        ["operator.replicas=3", "operator.podDisruptionBudget.minAvailable=3"],
        ["rabbitmq.replicas=3"],
        ["rabbitmq.replicas=5", "operator.replicas=2"],
    ],
)
def test_no_budget_blocks_a_node_drain(sets: list[str]) -> None:
    """kubectl drain and the cluster autoscaler wait forever on a budget allowing no eviction."""
    docs = render([*FIXED, *sets])
    replicas = {
        d["metadata"]["name"]: d["spec"]["replicas"]
        for d in docs
        if d["kind"] in ("Deployment", "StatefulSet")
    }
    gateway = one(docs, "WebSocketGateway")
    replicas[gateway["metadata"]["name"]] = gateway["spec"]["replicas"]["min"]
    for pdb in find(docs, "PodDisruptionBudget"):
        name = pdb["metadata"]["name"]
        assert allowed_evictions(pdb, replicas[name]) >= 1, f"{name}: {pdb['spec']}"
    operator = one(docs, "Deployment", f"{RELEASE}-operator")
    expected = operator["spec"]["replicas"] > 1 and "minAvailable=3" not in " ".join(sets)
    assert bool(find(docs, "PodDisruptionBudget", f"{RELEASE}-operator")) is expected
    assert bool(find(docs, "PodDisruptionBudget", BROKER)) is ("rabbitmq.replicas" in str(sets))


def test_a_cluster_without_persistence_is_refused() -> None:
    for replicas in ("3", "5"):
        cmd = [tool("helm"), "template", RELEASE, str(CHART)]
        cmd += [
            "--set",
            f"rabbitmq.replicas={replicas}",
            "--set",
            "rabbitmq.persistence.enabled=false",
        ]
        proc = run(cmd, check=False)
        assert proc.returncode != 0
        assert "rabbitmq.persistence.enabled" in proc.stderr
        # Past the schema (--skip-schema-validation), the template says why.
        proc = run([*cmd, "--skip-schema-validation"], check=False)
        assert proc.returncode != 0 and "forms a new cluster" in proc.stderr, proc.stderr
    docs = render(["rabbitmq.persistence.enabled=false"])
    assert not one(docs, "StatefulSet", BROKER)["spec"].get("volumeClaimTemplates")
