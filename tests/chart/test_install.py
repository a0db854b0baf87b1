"""Chart fixes a real cluster would show, each rendered with helm and validated."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from clarion import names
from tests.support import Vhost, wait_for_sync

from .helpers import (
    CRD_FILE,
    DEV_VALUES,
    NAMESPACE,
    RELEASE,
    find,
    helm_template_cmd,
    kubernetes_validate,
    load_docs,
    one,
    render,
    run,
)

pytestmark = pytest.mark.timeout(60)


def hooks(docs: list[dict]) -> list[dict]:
    return [d for d in docs if "helm.sh/hook" in (d["metadata"].get("annotations") or {})]


def test_uninstall_hook_deletes_the_release_gateways_before_the_operator_goes() -> None:
    docs = render()
    hook = hooks(docs)
    assert {d["kind"] for d in hook} == {"ServiceAccount", "Role", "RoleBinding", "Job"}
    assert all(d["metadata"]["annotations"]["helm.sh/hook"] == "pre-delete" for d in hook)
    job = one(hook, "Job")
    (c,) = job["spec"]["template"]["spec"]["containers"]
    assert c["command"][:3] == ["python", "-m", "clarion_operator.uninstall"]
    assert f"--release={RELEASE}" in c["command"] and f"--namespace={NAMESPACE}" in c["command"]
    gw = one(docs, "WebSocketGateway")
    assert gw["metadata"]["labels"]["clarion.dev/release"] == RELEASE
    # Exactly what the hook calls (tests/operator/test_e2e_uninstall.py records them).
    (rule,) = one(hook, "Role")["rules"]
    assert (rule["apiGroups"], rule["resources"], set(rule["verbs"])) == (
        ["clarion.dev"],
        ["websocketgateways"],
        {"list", "delete", "patch"},
    )
    # RBAC first (weight -10), the Job after: the Job's account must exist.
    weights = {d["kind"]: int(d["metadata"]["annotations"]["helm.sh/hook-weight"]) for d in hook}
    assert weights["Job"] > weights["Role"]
    kubernetes_validate(hook)


def test_a_watch_namespace_other_than_the_release_namespace_is_refused() -> None:
    proc = run(helm_template_cmd(["operator.watchNamespace=elsewhere"]), check=False)
    assert proc.returncode != 0
    assert "operator.watchNamespace=elsewhere differs from the release namespace" in proc.stderr
    ok = render(["operator.watchNamespace=" + NAMESPACE])
    assert one(ok, "KopfPeering")["metadata"]["namespace"] == NAMESPACE


def test_two_cluster_wide_releases_cannot_both_act() -> None:
    """Both would make the same ClusterKopfPeering: Helm refuses the second (and if
    forced, the operators peer: one acts)."""
    first = one(render(), "ClusterKopfPeering")["metadata"]["name"]
    cmd = helm_template_cmd()
    cmd[2] = "other"  # the release name
    other_docs = load_docs(run(cmd).stdout)
    second = one(other_docs, "ClusterKopfPeering")["metadata"]["name"]
    assert first == second == "clarion"
    args = one(other_docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--peering=clarion" in args


def test_crd_defaults_name_the_secrets_the_chart_creates() -> None:
    """The documented minimal WebSocketGateway (only `image`) finds its Secrets."""
    crd = next(d for d in yaml.safe_load_all(CRD_FILE.read_text()) if d)
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    broker = spec["properties"]["broker"]["properties"]
    auth = spec["properties"]["auth"]["properties"]
    secrets = {d["metadata"]["name"]: d.get("data", {}) for d in find(render(), "Secret")}
    refs = [broker["urlSecretRef"], broker["managementUrlSecretRef"]] + [
        auth[k] for k in ("jwtSecretRef", "apiKeySecretRef", "adminTokenSecretRef")
    ]
    for ref in refs:
        name = ref["properties"]["name"]["default"]
        key = ref["properties"]["key"]["default"]
        assert key in secrets.get(name, {}), f"default {name}/{key} is not rendered"


def _checksum(sets: list[str]) -> str:
    gw = one(render(sets), "WebSocketGateway")
    return str(gw["spec"]["podAnnotations"]["checksum/credentials"])


def test_new_credentials_roll_the_gateway_pods() -> None:
    base = ["auth.apiKey.value=k1", "auth.jwtSecret.value=j", "auth.adminToken.value=a"]
    base += ["rabbitmq.password=p"]
    same = _checksum(base)
    assert _checksum(base) == same  # given values: stable across renders
    for changed in ("auth.apiKey.value=k2", "auth.jwtSecret.value=j2", "rabbitmq.password=p2"):
        key = changed.split("=")[0]
        other = [s for s in base if not s.startswith(key)] + [changed]
        assert _checksum(other) != same, changed
    # The Secret and the checksum see the same generated value within one render.
    docs = render(["rabbitmq.password=p"])
    assert one(docs, "Secret", f"{RELEASE}-auth")["data"]["apiKeys"]


def test_rabbitmq_existing_secret() -> None:
    docs = render(["rabbitmq.existingSecret=my-rabbit"])
    assert find(docs, "Secret", f"{RELEASE}-rabbitmq") == []
    broker = one(docs, "WebSocketGateway")["spec"]["broker"]
    assert broker["urlSecretRef"] == {"name": "my-rabbit", "key": "url"}
    sts = one(docs, "StatefulSet")
    env = {e["name"]: e for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["RABBITMQ_DEFAULT_PASS"]["valueFrom"]["secretKeyRef"]["name"] == "my-rabbit"


def test_in_chart_rabbitmq_is_sized_from_the_values() -> None:
    docs = render()
    conf = one(docs, "ConfigMap", f"{RELEASE}-rabbitmq-config")["data"]
    assert "vm_memory_high_watermark.absolute = 320MiB" in conf["20-clarion.conf"]
    assert "rabbitmq_prometheus" in conf["enabled_plugins"]
    sts = one(docs, "StatefulSet")
    c = sts["spec"]["template"]["spec"]["containers"][0]
    assert c["resources"]["limits"]["memory"] == "512Mi"  # the watermark sits well under it
    assert c["readinessProbe"]["tcpSocket"] == {"port": "amqp"}  # test_broker_upgrades
    post = " ".join(c["lifecycle"]["postStart"]["exec"]["command"])
    assert '"stream-max-segment-size-bytes": 67108864' in post
    assert {"name": "prometheus", "containerPort": 15692} in c["ports"]
    # One node: no budget (it would allow no eviction and block every drain).
    assert not find(docs, "PodDisruptionBudget", f"{RELEASE}-rabbitmq")
    kubernetes_validate(docs)


def test_gateway_pdb_lets_unhealthy_pods_go() -> None:
    pdb = one(render(), "PodDisruptionBudget", RELEASE)
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


def test_gateway_values_reach_the_gateway_spec() -> None:
    sets = [
        "imagePullSecrets[0]=regcred",
        "gateway.nodeSelector.pool=ws",
        "gateway.priorityClassName=high",
        "gateway.serviceAccountName=gw",
        "gateway.podAnnotations.team=push",
        "gateway.env[0].name=EXTRA",
        "gateway.env[0].value=one",
        "gateway.probes.readiness.periodSeconds=7",
        "gateway.service.annotations.lb=nlb",
        "gateway.service.loadBalancerSourceRanges[0]=10.0.0.0/8",
        "gateway.topologySpreadConstraints=null",
    ]
    spec = one(render(sets), "WebSocketGateway")["spec"]
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert spec["nodeSelector"] == {"pool": "ws"}
    assert spec["priorityClassName"] == "high" and spec["serviceAccountName"] == "gw"
    assert spec["podAnnotations"]["team"] == "push"
    assert spec["env"] == [{"name": "EXTRA", "value": "one"}]
    assert spec["probes"]["readiness"]["periodSeconds"] == 7
    assert spec["service"]["annotations"] == {"lb": "nlb"}
    assert spec["service"]["loadBalancerSourceRanges"] == ["10.0.0.0/8"]
    assert "topologySpreadConstraints" not in spec  # the operator's default spreading
    pinned = ["gateway.topologySpreadConstraints[0].maxSkew=2"]
    given = one(render(pinned), "WebSocketGateway")["spec"]
    assert given["topologySpreadConstraints"] == [{"maxSkew": 2}]


def test_scrape_annotations_only_without_service_monitors() -> None:
    plain = one(render(), "WebSocketGateway")["spec"]["metrics"]
    monitored = one(render(["metrics.serviceMonitor.enabled=true"]), "WebSocketGateway")
    assert plain == {"scrapeAnnotations": True}
    assert monitored["spec"]["metrics"] == {"scrapeAnnotations": False}
    sts = one(render(["metrics.serviceMonitor.enabled=true"]), "StatefulSet")
    assert "prometheus.io/scrape" not in sts["spec"]["template"]["metadata"]["annotations"]


def test_ingress_and_httproute_keep_websockets_open() -> None:
    sets = [
        "ingress.enabled=true",
        "ingress.className=nginx",
        "ingress.hosts[0]=ws.example.com",
        "httpRoute.enabled=true",
        "httpRoute.parentRefs[0].name=public",
        "httpRoute.hostnames[0]=ws.example.com",
    ]
    docs = render(sets)
    ing = one(docs, "Ingress")
    assert (
        ing["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "3600"
    )
    backend = ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": RELEASE, "port": {"number": 80}}  # the public Service, never -api
    route = one(docs, "HTTPRoute")
    rule = route["spec"]["rules"][0]
    assert rule["timeouts"] == {"request": "0s", "backendRequest": "0s"}
    assert rule["backendRefs"] == [{"name": RELEASE, "port": 80}]
    kubernetes_validate(docs)
    for missing in (["ingress.enabled=true"], ["httpRoute.enabled=true"]):
        assert run(helm_template_cmd(missing), check=False).returncode != 0


def test_network_policies_let_the_operator_reach_pods_and_broker() -> None:
    docs = render(["networkPolicy.enabled=true"])
    policies = {d["metadata"]["name"]: d["spec"] for d in find(docs, "NetworkPolicy")}
    gw = policies[RELEASE]
    assert gw["podSelector"]["matchLabels"] == names.gateway_labels(RELEASE)
    public, api = gw["ingress"][0], gw["ingress"][1]
    assert public == {"ports": [{"port": "http"}]}  # anyone: clients
    assert api["ports"] == [{"port": "api"}]
    operator_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    selectors = [p["podSelector"].get("matchLabels", {}) for p in api["from"]]
    assert any(s and s.items() <= operator_labels.items() for s in selectors)
    rabbit = policies[f"{RELEASE}-rabbitmq"]["ingress"]
    mgmt = next(r for r in rabbit if r["ports"] == [{"port": "management"}])
    assert all(
        p["podSelector"]["matchLabels"].items() <= operator_labels.items() for p in mgmt["from"]
    )
    kubernetes_validate(docs)


QUANTITY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}


def _bytes(quantity: str) -> int:
    m = re.fullmatch(r"(\d+)([KMG]iB?)?", quantity)
    assert m, quantity
    return int(m.group(1)) * QUANTITY.get(m.group(2) or "", 1)


@pytest.mark.parametrize("values", [[], [DEV_VALUES]], ids=["default", "dev"])
def test_rabbitmq_memory_alarm_comes_before_the_oom_kill(values: list) -> None:
    docs = render(values=values)
    conf = one(docs, "ConfigMap", f"{RELEASE}-rabbitmq-config")["data"]["20-clarion.conf"]
    watermark = re.search(r"vm_memory_high_watermark.absolute = (\S+)", conf)
    assert watermark
    c = one(docs, "StatefulSet")["spec"]["template"]["spec"]["containers"][0]
    limit = _bytes(c["resources"]["limits"]["memory"])
    # RabbitMQ may use about twice its watermark at a peak (its GC): well under the limit.
    assert _bytes(watermark.group(1)) <= 0.65 * limit


def test_the_stream_segment_policy_is_one_rabbitmq_accepts(vhost: Vhost) -> None:
    """The chart's postStart policy, put on a real RabbitMQ: it takes it, applies it to a
    history stream, and refuses a misspelt key (so the check means something)."""
    c = one(render(), "StatefulSet")["spec"]["template"]["spec"]["containers"][0]
    command = " ".join(c["lifecycle"]["postStart"]["exec"]["command"])
    m = re.search(r"set_policy --apply-to (\w+) (\S+) '([^']+)'\s+'([^']+)'", command)
    assert m, command
    apply_to, name, pattern, definition = m.groups()
    policy = {"pattern": pattern, "definition": json.loads(definition), "apply-to": apply_to}
    with vhost.rabbit.mgmt() as api:
        r = api.put(f"/api/policies/{vhost.quoted}/{name}", json=policy)
        assert r.status_code in (201, 204), r.text
        stream = "clarion.gw.ns.push.history"
        r = api.put(
            f"/api/queues/{vhost.quoted}/{stream}",
            json={"durable": True, "arguments": {"x-queue-type": "stream"}},
        )
        assert r.status_code in (201, 204), r.text

        def applied() -> bool:
            q = api.get(f"/api/queues/{vhost.quoted}/{stream}").json()
            return bool(q.get("policy") == name)

        wait_for_sync(applied, 15, 0.2, "the policy on the history stream")
        typo = {**policy, "definition": {"stream-max-segment-size-byte": 1}}
        assert api.put(f"/api/policies/{vhost.quoted}/typo", json=typo).status_code == 400


def test_the_broker_rolls_on_its_own_password_only() -> None:
    def checksum(sets: list[str]) -> str:
        sts = one(render(["rabbitmq.password=p", *sets]), "StatefulSet")
        return str(sts["spec"]["template"]["metadata"]["annotations"]["checksum/credentials"])

    base = checksum(["auth.apiKey.value=a"])
    assert checksum(["auth.apiKey.value=b"]) == base  # a new API key leaves RabbitMQ running
    assert checksum(["auth.apiKey.value=a", "rabbitmq.password=q"]) != base
