"""The in-chart RabbitMQ as a cluster (rabbitmq.replicas), and a cluster run outside the chart."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import pytest

from clarion.broker.rabbitmq import address_of, split_urls

from .helpers import (
    CHART,
    NAMESPACE,
    RELEASE,
    Doc,
    find,
    helm_template_cmd,
    kubernetes_validate,
    one,
    policy_violations,
    render,
    run,
)
from .test_chart import render_notes

pytestmark = pytest.mark.timeout(60)

NAME = f"{RELEASE}-rabbitmq"
NODES = f"{NAME}-nodes"
HA = ["rabbitmq.replicas=3"]
#: An image whose peer discovery still asks the Kubernetes API (RabbitMQ before 4.1).
OLD_IMAGE = ["rabbitmq.image.tag=4.0.9-management"]
EXTERNAL = ["rabbitmq.enabled=false", "externalBroker.existingSecret=rabbit-cluster-urls"]
BROKER_LABELS = {"app.kubernetes.io/name": "rabbitmq", "app.kubernetes.io/component": "broker"}


def secret_data(doc: Doc) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in doc["data"].items()}


def broker_docs(docs: list[Doc]) -> list[str]:
    """Every object of the in-chart broker, as kind/name."""
    return [
        f"{d['kind']}/{d['metadata']['name']}"
        for d in docs
        if BROKER_LABELS.items() <= (d["metadata"].get("labels") or {}).items()
        or d["metadata"]["name"].startswith(NAME)
    ]


def rabbit_conf(docs: list[Doc]) -> dict[str, str]:
    text = one(docs, "ConfigMap", f"{NAME}-config")["data"]["20-clarion.conf"]
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    return dict(ln.split(" = ", 1) for ln in lines)


def container(sts: Doc) -> Doc:
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    return c


def test_three_replicas_render_a_cluster_that_validates() -> None:
    docs = render(HA)
    kubernetes_validate(docs)
    assert policy_violations(docs) == []
    sts = one(docs, "StatefulSet", NAME)
    assert sts["spec"]["replicas"] == 3
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    assert sts["spec"]["serviceName"] == NODES
    headless = one(docs, "Service", NODES)["spec"]
    assert headless["clusterIP"] == "None" and headless["publishNotReadyAddresses"] is True
    assert headless["selector"] == sts["spec"]["selector"]["matchLabels"]
    # The client Service stays as it was: the gateways may be pointed at it instead.
    assert one(docs, "Service", NAME)["spec"]["type"] == "ClusterIP"
    env = {e["name"]: e for e in container(sts)["env"]}
    # Each node is named after its own DNS name, which the others resolve.
    assert env["RABBITMQ_NODENAME"]["value"] == f"rabbit@$(MY_POD_NAME).{NODES}.{NAMESPACE}"
    assert env["MY_POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["RABBITMQ_USE_LONGNAME"]["value"] == "true"


def test_peer_discovery_config_and_plugin() -> None:
    docs = render(HA)
    cm = one(docs, "ConfigMap", f"{NAME}-config")["data"]
    assert "rabbitmq_peer_discovery_k8s" in cm["enabled_plugins"]
    conf = rabbit_conf(docs)
    assert conf["cluster_formation.peer_discovery_backend"] == "k8s"
    assert conf["net_ticktime"] == "15"
    # From 4.1 the plugin needs nothing else: the old settings only log warnings.
    assert not any(k.startswith("cluster_formation.k8s.") for k in conf)
    spec = one(docs, "StatefulSet", NAME)["spec"]["template"]["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert find(docs, "Role", f"{NAME}-peer-discovery") == []


def test_an_image_before_4_1_gets_the_api_settings_and_rbac() -> None:
    docs = render([*HA, *OLD_IMAGE])
    kubernetes_validate(docs)
    assert policy_violations(docs) == []
    conf = rabbit_conf(docs)
    assert conf["cluster_formation.k8s.host"] == "kubernetes.default"
    assert conf["cluster_formation.k8s.address_type"] == "hostname"
    assert conf["cluster_formation.k8s.service_name"] == NODES
    # Node names are rabbit@<hostname from the endpoints><suffix>: the same as RABBITMQ_NODENAME.
    assert conf["cluster_formation.k8s.hostname_suffix"] == f".{NODES}.{NAMESPACE}"
    (rule,) = one(docs, "Role", f"{NAME}-peer-discovery")["rules"]
    assert rule == {
        "apiGroups": [""],
        "resources": ["endpoints"],
        "resourceNames": [NODES],
        "verbs": ["get"],
    }
    binding = one(docs, "RoleBinding", f"{NAME}-peer-discovery")
    assert binding["roleRef"]["name"] == f"{NAME}-peer-discovery"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": NAME, "namespace": NAMESPACE}]
    one(docs, "ServiceAccount", NAME)
    spec = one(docs, "StatefulSet", NAME)["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == NAME and spec["automountServiceAccountToken"] is True


def test_the_nodes_share_one_generated_erlang_cookie() -> None:
    docs = render(HA)
    data = secret_data(one(docs, "Secret", NAME))
    assert len(data["erlangCookie"]) >= 32 and data["erlangCookie"].isalnum()
    spec = one(docs, "StatefulSet", NAME)["spec"]["template"]["spec"]
    volume = next(v for v in spec["volumes"] if v["name"] == "erlang-cookie")
    assert volume["secret"] == {
        "secretName": NAME,
        "items": [{"key": "erlangCookie", "path": ".erlang.cookie"}],
    }
    (init,) = spec["initContainers"]
    assert "/var/lib/rabbitmq/.erlang.cookie" in init["command"][-1]
    assert "chmod 600" in init["command"][-1]
    # Under rabbitmq.existingSecret the cookie comes from that Secret; the chart makes none.
    given = render([*HA, "rabbitmq.existingSecret=my-rabbit"])
    assert find(given, "Secret", NAME) == []
    spec = one(given, "StatefulSet", NAME)["spec"]["template"]["spec"]
    volume = next(v for v in spec["volumes"] if v["name"] == "erlang-cookie")
    assert volume["secret"]["secretName"] == "my-rabbit"


def test_the_gateway_and_the_operator_get_every_node() -> None:
    docs = render(HA)
    data = secret_data(one(docs, "Secret", NAME))
    broker = one(docs, "WebSocketGateway")["spec"]["broker"]
    assert broker["urlSecretRef"] == {"name": NAME, "key": "url"}
    assert broker["managementUrlSecretRef"] == {"name": NAME, "key": "managementUrl"}
    hosts = [f"{NAME}-{i}.{NODES}.{NAMESPACE}.svc" for i in range(3)]
    # Parsed as the gateway parses --amqp-url.
    urls = split_urls(data["url"])
    assert [address_of(u) for u in urls] == [f"{h}:5672" for h in hosts]
    management = split_urls(data["managementUrl"])
    assert [urlsplit(u).netloc.rsplit("@", 1)[1] for u in management] == [
        f"{h}:15672" for h in hosts
    ]
    for u in [*urls, *management]:
        parts = urlsplit(u)
        assert (parts.username, parts.password) == ("clarion", data["password"])
    # Or the one client Service, when asked.
    data = secret_data(one(render([*HA, "rabbitmq.gatewayAddresses=service"]), "Secret", NAME))
    assert [address_of(u) for u in split_urls(data["url"])] == [f"{NAME}.{NAMESPACE}.svc:5672"]
    assert "," not in data["managementUrl"]


@pytest.mark.parametrize(("replicas", "min_available"), [(3, 2), (5, 3)])
def test_the_disruption_budget_keeps_a_majority(replicas: int, min_available: int) -> None:
    docs = render([f"rabbitmq.replicas={replicas}"])
    pdb = one(docs, "PodDisruptionBudget", NAME)["spec"]
    assert pdb == {
        "minAvailable": min_available,
        "selector": one(docs, "StatefulSet", NAME)["spec"]["selector"],
    }


def test_anti_affinity_preferred_by_default_required_on_request() -> None:
    labels = one(render(HA), "StatefulSet", NAME)["spec"]["selector"]["matchLabels"]
    term = {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": labels}}
    spec = one(render(HA), "StatefulSet", NAME)["spec"]["template"]["spec"]
    assert spec["affinity"]["podAntiAffinity"] == {
        "preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 100, "podAffinityTerm": term}
        ]
    }
    docs = render([*HA, "rabbitmq.antiAffinity=required"])
    spec = one(docs, "StatefulSet", NAME)["spec"]["template"]["spec"]
    assert spec["affinity"]["podAntiAffinity"] == {
        "requiredDuringSchedulingIgnoredDuringExecution": [term]
    }


def test_network_policy_lets_the_nodes_talk() -> None:
    docs = render([*HA, "networkPolicy.enabled=true"])
    kubernetes_validate(docs)
    ingress = one(docs, "NetworkPolicy", NAME)["spec"]["ingress"]
    peers = [r for r in ingress if {"port": 25672} in r["ports"]]
    assert peers and peers[0]["from"] == [
        {
            "podSelector": {
                "matchLabels": one(docs, "StatefulSet", NAME)["spec"]["selector"]["matchLabels"]
            }
        }
    ]
    assert {"port": 4369} in peers[0]["ports"]
    assert {"port": 6000, "endPort": 6500} in peers[0]["ports"]  # stream replication
    single = one(render(["networkPolicy.enabled=true"]), "NetworkPolicy", NAME)["spec"]
    assert not any({"port": 25672} in r["ports"] for r in single["ingress"])


def test_one_replica_renders_the_single_node_as_before() -> None:
    docs = render(["rabbitmq.replicas=1"])
    sts = one(docs, "StatefulSet", NAME)
    assert sts["spec"]["replicas"] == 1 and sts["spec"]["serviceName"] == NAME
    assert "podManagementPolicy" not in sts["spec"]
    spec = sts["spec"]["template"]["spec"]
    assert "affinity" not in spec and "initContainers" not in spec
    env = {e["name"]: e.get("value") for e in container(sts)["env"]}
    assert env["RABBITMQ_NODENAME"] == "rabbit@localhost"  # where the data volume has it
    assert find(docs, "Service", NODES) == []
    assert "erlangCookie" not in one(docs, "Secret", NAME)["data"]
    assert "cluster_formation.peer_discovery_backend" not in rabbit_conf(docs)
    assert find(docs, "PodDisruptionBudget", NAME) == []  # it would block every drain
    url = secret_data(one(docs, "Secret", NAME))["url"]
    assert [address_of(u) for u in split_urls(url)] == [f"{NAME}.{NAMESPACE}.svc:5672"]


def replicas_schema() -> dict[str, object]:
    schema = json.loads((CHART / "values.schema.json").read_text())
    return dict(schema["properties"]["rabbitmq"]["properties"]["replicas"])


@pytest.mark.parametrize("replicas", [1, 3, 5, 7, 9])
def test_schema_takes_one_or_an_odd_count(replicas: int) -> None:
    jsonschema.validate(replicas, replicas_schema())


@pytest.mark.parametrize("replicas", [-1, 0, 2, 4, 6, 3.5, "3"])
def test_schema_refuses_an_even_or_odd_looking_count(replicas: object) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(replicas, replicas_schema())


def test_helm_refuses_an_even_count() -> None:
    proc = run(helm_template_cmd(["rabbitmq.replicas=2"]), check=False)
    assert proc.returncode != 0 and "rabbitmq.replicas" in proc.stderr


def test_an_external_cluster_renders_no_broker() -> None:
    # The Cluster Operator's RabbitmqCluster (or any cluster): the URLs come from a given Secret.
    docs = render([*EXTERNAL, *HA, "networkPolicy.enabled=true"])
    kubernetes_validate(docs)
    assert broker_docs(docs) == []
    assert find(docs, "StatefulSet") == []
    broker = one(docs, "WebSocketGateway")["spec"]["broker"]
    assert broker["urlSecretRef"] == {"name": "rabbit-cluster-urls", "key": "url"}
    assert broker["managementUrlSecretRef"] == {
        "name": "rabbit-cluster-urls",
        "key": "managementUrl",
    }


def test_notes_say_how_to_check_the_cluster(tmp_path: Path) -> None:
    notes = render_notes(tmp_path, HA, [])
    assert "RabbitMQ runs 3 nodes" in notes
    assert f"kubectl -n {NAMESPACE} exec {NAME}-0 -- rabbitmq-diagnostics cluster_status" in notes
    assert "cluster_status" not in render_notes(tmp_path / "one", [], [])


def test_a_new_node_list_rolls_the_gateways() -> None:
    def checksum(sets: list[str]) -> str:
        given = ["rabbitmq.password=pw", "auth.apiKey.value=k", "auth.jwtSecret.value=j"]
        given += ["auth.adminToken.value=a"]
        gw = one(render([*sets, *given]), "WebSocketGateway")
        return str(gw["spec"]["podAnnotations"]["checksum/credentials"])

    three, five = checksum(HA), checksum(["rabbitmq.replicas=5"])
    assert three != five  # the gateways read the URL list once, at start
    assert checksum(["rabbitmq.replicas=3", "gateway.replicas.min=3"]) == three


def test_each_node_is_scraped_once() -> None:
    docs = render([*HA, "metrics.serviceMonitor.enabled=true"])
    monitor = one(docs, "ServiceMonitor", NAME)["spec"]
    selected = [
        s
        for s in find(docs, "Service")
        if monitor["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
    ]
    (port,) = {e["port"] for e in monitor["endpoints"]}
    # Both Services select the nodes; only the client one has the metrics port.
    scraped = [
        s["metadata"]["name"] for s in selected if port in {p["name"] for p in s["spec"]["ports"]}
    ]
    assert scraped == [NAME]
