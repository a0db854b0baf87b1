"""The Helm chart, checked with the real helm and the Kubernetes schemas (no cluster here)."""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from clarion import names
from clarion.config import default_of, option

from .helpers import (
    CHART,
    CRD_FILE,
    CUSTOM_KINDS,
    DASHBOARD,
    DEV_VALUES,
    NAMESPACE,
    PEERING_CRD_FILE,
    RELEASE,
    Doc,
    closed_schema,
    crd_schema,
    find,
    helm_template_cmd,
    kubernetes_validate,
    load_doc,
    one,
    policy_violations,
    render,
    run,
    tool,
)

EXTERNAL_BROKER = ["rabbitmq.enabled=false", "externalBroker.existingSecret=prod-rabbitmq"]
EXISTING_SECRETS = [
    "auth.apiKey.existingSecret=prod-api-keys",
    "auth.apiKey.key=keys",
    "auth.jwtSecret.existingSecret=prod-jwt",
    "auth.adminToken.existingSecret=prod-admin",
]
SERVICE_MONITOR = [
    "metrics.serviceMonitor.enabled=true",
    "metrics.serviceMonitor.labels.release=kube-prometheus-stack",
]

#: Value combinations rendered by the tests: (--set list, values files).
COMBOS: dict[str, tuple[list[str], list[Path]]] = {
    "default": ([], []),
    "external-broker-secret": (EXTERNAL_BROKER, []),
    "external-broker-url": (
        [
            "rabbitmq.enabled=false",
            "externalBroker.url=amqp://u:p@rabbit.example:5672/clarion",
            "externalBroker.managementUrl=http://u:p@rabbit.example:15672",
        ],
        [],
    ),
    "rabbitmq-cluster": (["rabbitmq.replicas=3", "networkPolicy.enabled=true"], []),
    "service-monitor": (SERVICE_MONITOR, []),
    "existing-secrets": (EXISTING_SECRETS, []),
    "one-namespace": (["operator.watchNamespace=" + NAMESPACE], []),
    "production": (
        [*EXTERNAL_BROKER, *EXISTING_SECRETS, *SERVICE_MONITOR, "gateway.replicas.min=3"],
        [],
    ),
    "no-gateway": (["gateway.enabled=false", "dashboard.enabled=false"], []),
    "dev": ([], [DEV_VALUES]),
}


def is_hook(doc: Doc) -> bool:
    return "helm.sh/hook" in (doc["metadata"].get("annotations") or {})


def combo(name: str, include_crds: bool = False, hooks: bool = False) -> list[Doc]:
    """The release's objects (the hooks' too with ``hooks``: they live only while they run)."""
    sets, values = COMBOS[name]
    docs = render(sets, values, include_crds=include_crds)
    return docs if hooks else [d for d in docs if not is_hook(d)]


def secret_data(doc: Doc) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in (doc.get("data") or {}).items()}


# -- helm lint, helm template | kubernetes-validate ---------------------------


@pytest.mark.parametrize("values", [[], [DEV_VALUES]], ids=["default", "dev"])
def test_helm_lint_strict(values: list[Path]) -> None:
    cmd = [tool("helm"), "lint", "--strict", str(CHART)]
    for v in values:
        cmd += ["--values", str(v)]
    out = run(cmd).stdout
    assert "0 chart(s) failed" in out
    assert "[WARNING]" not in out and "[ERROR]" not in out, out


@pytest.mark.parametrize("name", COMBOS)
def test_rendered_manifests_validate(name: str) -> None:
    docs = combo(name, include_crds=True, hooks=True)
    out = kubernetes_validate(docs)
    kinds = {d["kind"] for d in docs}
    assert "CustomResourceDefinition" in kinds and "Deployment" in kinds
    checked = [d for d in docs if d["kind"] not in CUSTOM_KINDS]
    assert out.count("passed for resource") == len(checked)


def test_kubernetes_validate_is_strict() -> None:
    """A negative control: an unknown field in a Deployment must fail the validation."""
    docs = combo("default")
    broken = [json.loads(json.dumps(d)) for d in docs]
    one(broken, "Deployment")["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = (
        "Always"
    )
    with pytest.raises(AssertionError, match="imagePullPolicyy"):
        kubernetes_validate(broken)


def test_kubernetes_validate_refuses_a_kind_it_has_no_schema_for() -> None:
    """A built-in-looking kind without a schema would not be checked at all: it fails, as
    the command's WARN did; and a custom kind is left to the CRD tests."""
    docs = combo("default")
    stranger = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    with pytest.raises(AssertionError, match="WARN widget/w"):
        kubernetes_validate([*docs, stranger])
    custom = {"apiVersion": "clarion.dev/v1alpha1", "kind": "WebSocketGateway"}
    assert "websocketgateway" not in kubernetes_validate([*docs, custom])


def test_checksum_annotations_are_strings_even_when_all_digits() -> None:
    """A checksum is 16 hex digits; about one in 1,850 has no letter, and unquoted YAML
    reads it as a number, which the API server refuses as an annotation (a random broker
    password failed kubernetes-validate so). These credentials give all-digit checksums:
    the broker's (clarion:pw37) and the gateway's (its credentials with admin token t4074)."""
    docs = render(
        [
            "rabbitmq.password=pw37",
            "rabbitmq.erlangCookie=c",
            "auth.apiKey.value=a",
            "auth.jwtSecret.value=j",
            "auth.adminToken.value=t4074",
        ]
    )
    broker = one(docs, "StatefulSet")["spec"]["template"]["metadata"]["annotations"]
    gateway = one(docs, "WebSocketGateway")["spec"]["podAnnotations"]
    sums = {k: v["checksum/credentials"] for k, v in (("broker", broker), ("gateway", gateway))}
    assert len(sums) == 2, sums
    assert all(isinstance(v, str) and v.isdigit() for v in sums.values()), sums


@pytest.mark.parametrize("name", [n for n in COMBOS if n != "dev"])
def test_policies_hold(name: str) -> None:
    """Limits, probes, non-root, read-only root filesystem, no wildcard RBAC."""
    assert policy_violations(combo(name, hooks=True)) == []


def test_dev_values_relax_only_the_read_only_root() -> None:
    """Tilt's live update writes into the operator container; nothing else is relaxed."""
    docs = combo("dev")
    assert policy_violations(docs, read_only_root=False) == []
    assert policy_violations(docs) == [
        "Deployment/clarion-operator container operator: readOnlyRootFilesystem is not true"
    ]


# -- the custom resources against their CRDs ------------------------------------


@pytest.mark.parametrize("name", [n for n in COMBOS if n != "no-gateway"])
def test_gateway_resource_matches_crd(name: str) -> None:
    docs = combo(name)
    gw = one(docs, "WebSocketGateway")
    assert gw["apiVersion"] == f"{names.CRD_GROUP}/{names.CRD_VERSION}"
    assert gw["metadata"]["namespace"] == NAMESPACE
    schema = closed_schema(crd_schema(CRD_FILE, names.CRD_KIND))
    # OpenAPI v3.0 schemas use draft-4 keywords (boolean exclusiveMinimum).
    jsonschema.Draft4Validator(schema).validate(gw)


def test_closed_schema_catches_a_typo() -> None:
    gw = json.loads(json.dumps(one(combo("default"), "WebSocketGateway")))
    gw["spec"]["scaling"]["targetConnectionPerPod"] = 10
    schema = closed_schema(crd_schema(CRD_FILE, names.CRD_KIND))
    with pytest.raises(jsonschema.ValidationError, match="targetConnectionPerPod"):
        jsonschema.Draft4Validator(schema).validate(gw)


@pytest.mark.parametrize("name", ["default", "one-namespace"])
def test_peering_object_matches_crd_and_operator_flag(name: str) -> None:
    docs = combo(name)
    kind = "KopfPeering" if name == "one-namespace" else "ClusterKopfPeering"
    peering = one(docs, kind)
    jsonschema.Draft4Validator(closed_schema(crd_schema(PEERING_CRD_FILE, kind))).validate(peering)
    args = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert f"--peering={peering['metadata']['name']}" in args
    if name == "one-namespace":
        assert peering["metadata"]["namespace"] == NAMESPACE
        assert f"--namespace={NAMESPACE}" in args and "--all-namespaces" not in args
    else:
        assert "--all-namespaces" in args


@pytest.mark.parametrize("name", [n for n in COMBOS if n != "no-gateway"])
def test_gateway_secret_refs_resolve(name: str) -> None:
    """Each Secret the WebSocketGateway names is rendered with that key, or is an existingSecret."""
    sets, _ = COMBOS[name]
    docs = combo(name)
    spec = one(docs, "WebSocketGateway")["spec"]
    refs = [
        spec["broker"]["urlSecretRef"],
        spec["broker"]["managementUrlSecretRef"],
        spec["auth"]["jwtSecretRef"],
        spec["auth"]["apiKeySecretRef"],
        spec["auth"]["adminTokenSecretRef"],
    ]
    secrets = {d["metadata"]["name"]: secret_data(d) for d in find(docs, "Secret")}
    existing = {s.split("=", 1)[1] for s in sets if ".existingSecret=" in s}
    for ref in refs:
        if ref["name"] in existing:
            assert ref["name"] not in secrets, f"{ref['name']} is existing, not chart-made"
            continue
        assert ref["name"] in secrets, f"{ref} names no rendered Secret"
        assert secrets[ref["name"]].get(ref["key"]), f"{ref} names an empty or missing key"


# -- the values schema ------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "setting", "error"),
    [
        ("--set", "gateway.replicas.mni=1", "Additional property mni is not allowed"),
        ("--set", "rabbitmq.enable=false", "Additional property enable is not allowed"),
        ("--set", "operator.resources.limits.cpus=1", "Additional property cpus is not allowed"),
        ("--set", "typo=1", "Additional property typo is not allowed"),
        ("--set-string", "operator.replicas=two", "Invalid type"),
        ("--set", "rabbitmq.enabled=yes-please", "Invalid type"),
        ("--set", "gateway.service.port=70000", "Must be less than or equal to 65535"),
        ("--set", "auth.mode=basic", "auth.mode"),
        ("--set", "gateway.broker.routing=topic", "gateway.broker.routing"),
        ("--set", "operator.securityContext.runAsNonRoot=false", "runAsNonRoot"),
    ],
)
def test_values_schema_rejects(flag: str, setting: str, error: str) -> None:
    proc = run(helm_template_cmd(extra=[flag, setting]), check=False)
    assert proc.returncode != 0, f"{setting} was accepted"
    assert "values don't meet the specifications of the schema" in proc.stderr, proc.stderr
    assert error in proc.stderr, proc.stderr


def test_routing_reaches_the_gateway_resource() -> None:
    """``gateway.broker.routing`` is the CRD's ``broker.routing``: same values, same default."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["gateway"]["broker"]["routing"] == default_of("routing")
    schema = json.loads((CHART / "values.schema.json").read_text())
    routing = schema["properties"]["gateway"]["properties"]["broker"]["properties"]["routing"]
    assert tuple(routing["enum"]) == option("routing").choices
    for value in option("routing").choices or ():
        gw = one(render([f"gateway.broker.routing={value}"]), "WebSocketGateway")
        assert gw["spec"]["broker"]["routing"] == value
    assert one(combo("default"), "WebSocketGateway")["spec"]["broker"]["routing"] == (
        default_of("routing")
    )


def test_replica_bounds_are_checked() -> None:
    """The CRD refuses min > max at apply time; the chart says so before that."""
    proc = run(helm_template_cmd(["gateway.replicas.min=5", "gateway.replicas.max=3"]), check=False)
    assert proc.returncode != 0
    assert "gateway.replicas.min (5) must not exceed gateway.replicas.max (3)" in proc.stderr


def test_schema_closes_every_object() -> None:
    """additionalProperties is false on every fixed-shape object (maps declare a value type)."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    open_objects: list[str] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" and "additionalProperties" not in node:
                if path != "/properties/global":
                    open_objects.append(path)
            for k, v in node.items():
                walk(v, f"{path}/{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}/{i}")

    walk(schema, "")
    assert open_objects == []


def test_every_knob_has_a_comment() -> None:
    """Each leaf in values.yaml has a comment line above it, or above a parent key."""
    uncommented: list[str] = []
    covered: list[int] = []  # indents of the commented ancestors still open
    previous = ""
    for line in (CHART / "values.yaml").read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            previous = stripped or previous
            continue
        indent = len(line) - len(line.lstrip())
        covered = [i for i in covered if i < indent]
        m = re.match(r"^(-\s+)?([A-Za-z0-9_.-]+):(.*)$", stripped)
        if m and not m.group(1):
            commented = previous.startswith("#")
            if commented:
                covered.append(indent)
            is_leaf = m.group(3).strip() != ""
            if is_leaf and not commented and not covered:
                uncommented.append(stripped)
        previous = stripped
    assert uncommented == []


# -- what the chart renders ---------------------------------------------------


def test_operator_deployment() -> None:
    docs = combo("default")
    dep = one(docs, "Deployment", f"{RELEASE}-operator")
    assert dep["spec"]["replicas"] == 2
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    # The image has no ENTRYPOINT, so args alone would replace its CMD.
    dockerfile = (CHART.parent.parent / "Dockerfile").read_text()
    assert 'CMD ["clarion-operator"]' in dockerfile and "ENTRYPOINT" not in dockerfile
    assert c["command"] == ["clarion-operator"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"liveness": 8080, "metrics": 9090}
    assert "--liveness-port=8080" in c["args"] and "--metrics-port=9090" in c["args"]
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "liveness"}
    assert pod["serviceAccountName"] == one(docs, "ServiceAccount")["metadata"]["name"]
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]


def _rules(doc: Doc) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in doc["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


OPERATOR_DOC = CHART.parent.parent / "docs" / "operator.md"
#: Resources that are not namespaced: they can only be granted by a ClusterRole.
CLUSTER_SCOPED = {"customresourcedefinitions", "clusterkopfpeerings", "namespaces"}


def operator_rbac() -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) rows of the RBAC block of docs/operator.md (definitive)."""
    block = re.search(r"```rbac\n(.*?)```", OPERATOR_DOC.read_text(), re.S)
    assert block, "docs/operator.md has no ```rbac block"
    rows: set[tuple[str, str, str]] = set()
    for line in block.group(1).splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        group, resource, *verbs = line.split()
        rows |= {(group.strip('"'), resource, verb) for verb in verbs}
    return rows


def test_rbac_all_namespaces_is_exactly_what_the_operator_uses() -> None:
    docs = combo("default")
    granted = set().union(*(_rules(d) for d in find(docs, "ClusterRole")))
    # docs/operator.md: with --all-namespaces every row but kopfpeerings and namespaces.
    wanted = {r for r in operator_rbac() if r[1] not in ("kopfpeerings", "namespaces")}
    assert granted == wanted
    assert find(docs, "Role") == [] and find(docs, "RoleBinding") == []
    sa = one(docs, "ServiceAccount")["metadata"]["name"]
    bound = {d["roleRef"]["name"] for d in find(docs, "ClusterRoleBinding")}
    assert bound == {d["metadata"]["name"] for d in find(docs, "ClusterRole")}
    for b in find(docs, "ClusterRoleBinding"):
        assert b["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE}]


def test_rbac_one_namespace_uses_a_role() -> None:
    docs = combo("one-namespace")
    rows = operator_rbac()
    role = one(docs, "Role")
    assert role["metadata"]["namespace"] == NAMESPACE
    # docs/operator.md: with --namespace the namespaced rows in a Role, CRDs and
    # namespaces in a ClusterRole, no clusterkopfpeerings.
    assert _rules(role) == {r for r in rows if r[1] not in CLUSTER_SCOPED}
    assert _rules(one(docs, "ClusterRole")) == {
        r for r in rows if r[1] in ("customresourcedefinitions", "namespaces")
    }
    binding = one(docs, "RoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }


def test_generated_secrets_and_given_values() -> None:
    auth_name = f"{RELEASE}-auth"
    first = secret_data(one(combo("default"), "Secret", auth_name))
    assert set(first) == {"apiKeys", "jwtSecret", "adminToken"}
    assert all(len(v) >= 32 and v.isalnum() for v in first.values())
    # helm template has no cluster to look up, so each render generates afresh
    # (a real upgrade finds the live Secret and keeps its values).
    second = secret_data(
        one(render(["auth.apiKey.value=given-key"]), "Secret", auth_name)  # a fresh render
    )
    assert second["apiKeys"] == "given-key"
    assert second["jwtSecret"] != first["jwtSecret"]
    rabbit = secret_data(one(combo("default"), "Secret", f"{RELEASE}-rabbitmq"))
    host = f"{RELEASE}-rabbitmq.{NAMESPACE}.svc"
    assert rabbit["url"] == f"amqp://clarion:{rabbit['password']}@{host}:5672/"
    assert rabbit["managementUrl"] == f"http://clarion:{rabbit['password']}@{host}:15672"


def test_existing_secrets_replace_the_chart_secret() -> None:
    docs = combo("existing-secrets")
    assert find(docs, "Secret", f"{RELEASE}-auth") == []
    auth = one(docs, "WebSocketGateway")["spec"]["auth"]
    assert auth["apiKeySecretRef"] == {"name": "prod-api-keys", "key": "keys"}
    assert auth["jwtSecretRef"] == {"name": "prod-jwt", "key": "jwtSecret"}
    assert auth["adminTokenSecretRef"] == {"name": "prod-admin", "key": "adminToken"}


def test_external_broker() -> None:
    docs = combo("external-broker-secret")
    assert find(docs, "StatefulSet") == [] and find(docs, "Secret", f"{RELEASE}-rabbitmq") == []
    broker = one(docs, "WebSocketGateway")["spec"]["broker"]
    assert broker["urlSecretRef"] == {"name": "prod-rabbitmq", "key": "url"}
    assert broker["managementUrlSecretRef"] == {"name": "prod-rabbitmq", "key": "managementUrl"}
    proc = run(helm_template_cmd(["rabbitmq.enabled=false"]), check=False)
    assert proc.returncode != 0 and "externalBroker.existingSecret" in proc.stderr


def test_in_chart_rabbitmq() -> None:
    docs = combo("default")
    sts = one(docs, "StatefulSet", f"{RELEASE}-rabbitmq")
    c = sts["spec"]["template"]["spec"]["containers"][0]
    # A pinned release of the supported 4.x series, not a floating tag.
    assert re.fullmatch(r"rabbitmq:4\.\d+\.\d+-management", c["image"]), c["image"]
    env = {e["name"]: e for e in c["env"]}
    assert env["RABBITMQ_DEFAULT_PASS"]["valueFrom"]["secretKeyRef"] == {
        "name": f"{RELEASE}-rabbitmq",
        "key": "password",
    }
    assert {m["mountPath"] for m in c["volumeMounts"]} >= {"/var/lib/rabbitmq", "/tmp"}
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"] == {
        "storage": "4Gi"
    }
    svc = one(docs, "Service", f"{RELEASE}-rabbitmq")
    assert {p["port"] for p in svc["spec"]["ports"]} == {5672, 15672, 15692}  # 15692: metrics


def test_scrape_annotations_or_service_monitors() -> None:
    plain = combo("default")
    annotations = one(plain, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "9090"
    assert find(plain, "ServiceMonitor") == []

    docs = combo("service-monitor")
    monitors = {d["metadata"]["name"]: d for d in find(docs, "ServiceMonitor")}
    assert set(monitors) == {RELEASE, f"{RELEASE}-operator", f"{RELEASE}-rabbitmq"}
    rabbit = one(docs, "Service", f"{RELEASE}-rabbitmq")
    assert monitors[f"{RELEASE}-rabbitmq"]["spec"]["endpoints"][0]["port"] in {
        p["name"] for p in rabbit["spec"]["ports"]
    }
    assert monitors[f"{RELEASE}-rabbitmq"]["spec"]["selector"]["matchLabels"].items() <= (
        rabbit["metadata"]["labels"].items()
    )
    for m in monitors.values():
        assert m["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    gw = monitors[RELEASE]["spec"]
    assert gw["selector"]["matchLabels"] == names.gateway_labels(RELEASE)
    assert gw["endpoints"][0]["port"] == "api"  # the internal port: /metrics
    assert gw["endpoints"][0]["relabelings"][0]["targetLabel"] == "gateway"
    op_svc = one(docs, "Service", f"{RELEASE}-operator-metrics")
    assert monitors[f"{RELEASE}-operator"]["spec"]["selector"]["matchLabels"].items() <= (
        op_svc["metadata"]["labels"].items()
    )
    pod_annotations = one(docs, "Deployment")["spec"]["template"]["metadata"].get("annotations")
    assert not (pod_annotations or {}).get("prometheus.io/scrape")


def test_pod_disruption_budgets_select_the_right_pods() -> None:
    docs = combo("default")
    pdbs = {d["metadata"]["name"]: d["spec"] for d in find(docs, "PodDisruptionBudget")}
    assert pdbs[RELEASE]["maxUnavailable"] == 1
    # Gateway pods carry the operator's labels (clarion.names.gateway_labels).
    assert pdbs[RELEASE]["selector"]["matchLabels"].items() <= (
        names.gateway_labels(RELEASE).items()
    )
    op_pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert pdbs[f"{RELEASE}-operator"]["selector"]["matchLabels"].items() <= op_pod_labels.items()
    # The operator's pods must not look like gateway pods.
    assert names.LABEL_GATEWAY not in op_pod_labels


def test_dashboard_configmap_carries_the_file() -> None:
    cm = one(combo("default"), "ConfigMap", f"{RELEASE}-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = json.loads(cm["data"]["clarion.json"])
    source = json.loads(DASHBOARD.read_text())
    assert {k: v for k, v in shipped.items() if k not in ("uid", "title")} == {
        k: v for k, v in source.items() if k not in ("uid", "title")
    }


def test_dashboard_uid_is_per_release() -> None:
    """Two releases (another name, or another namespace) ship dashboards that do not collide."""

    def dashboard(extra: list[str]) -> dict[str, Any]:
        proc = run(helm_template_cmd(extra=["--show-only", "templates/dashboard.yaml", *extra]))
        return dict(json.loads(load_doc(proc.stdout)["data"]["clarion.json"]))

    first = dashboard([])
    other_ns = dashboard(["--namespace", "other"])
    helm = [tool("helm"), "template", "push", str(CHART), "--namespace", NAMESPACE]
    other_name = run([*helm, "--show-only", "templates/dashboard.yaml"]).stdout
    uids = {
        first["uid"],
        other_ns["uid"],
        json.loads(load_doc(other_name)["data"]["clarion.json"])["uid"],
    }
    assert len(uids) == 3 and all(len(u) <= 40 for u in uids)
    assert first["title"] == f"Clarion ({NAMESPACE}/{RELEASE})"
    assert dashboard(["--set", "dashboard.uid=mine"])["uid"] == "mine"


# -- NOTES.txt --------------------------------------------------------------------


def render_notes(tmp_path: Path, sets: list[str], values: list[Path]) -> str:
    """NOTES.txt as helm renders it: `helm template` skips NOTES, so render it through tpl."""
    chart = tmp_path / "clarion"
    shutil.copytree(CHART, chart)
    (chart / "notes-src").mkdir()
    shutil.copy(CHART / "templates" / "NOTES.txt", chart / "notes-src" / "NOTES.txt")
    (chart / "templates" / "zz-notes-preview.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes-preview\ndata:\n"
        '  notes: {{ tpl (.Files.Get "notes-src/NOTES.txt") . | toJson }}\n'
    )
    cmd = [tool("helm"), "template", RELEASE, str(chart), "--namespace", NAMESPACE]
    cmd += ["--show-only", "templates/zz-notes-preview.yaml"]
    for v in values:
        cmd += ["--values", str(v)]
    for s in sets:
        cmd += ["--set", s]
    return str(load_doc(run(cmd).stdout)["data"]["notes"])


def test_notes_print_the_two_window_demo(tmp_path: Path) -> None:
    notes = render_notes(tmp_path, [], [DEV_VALUES])
    sel = f"-l {names.LABEL_GATEWAY}={RELEASE}"
    for i, port in ((0, 8080), (1, 8081)):
        assert (
            f"POD{i}=$(kubectl -n {NAMESPACE} get pods {sel} "
            f"-o jsonpath='{{.items[{i}].metadata.name}}')" in notes
        )
        assert (
            f"kubectl -n {NAMESPACE} port-forward pod/$POD{i} {port}:http {port + 1000}:api &"
            in notes
        )
        assert f"http://localhost:{port}/" in notes
    assert "clarion listen ws://localhost:8080/ws --user u1" in notes
    assert (
        f"API_KEY=$(kubectl -n {NAMESPACE} get secret {RELEASE}-auth "
        "-o jsonpath='{.data.apiKeys}' | base64 -d)" in notes
    )
    # Publishing goes to the internal api port (9081 forwards pod 1's api).
    assert 'clarion publish --url http://localhost:9081 --user u1 --api-key "$API_KEY"' in notes
    assert "port-forward svc/clarion-rabbitmq 15672:15672" in notes


def test_notes_with_jwt_auth_explain_the_token(tmp_path: Path) -> None:
    notes = render_notes(tmp_path, ["auth.apiKey.existingSecret=prod-api-keys"], [])
    assert "port-forward pod/$POD1 8081:http 9081:api" in notes
    assert "get secret prod-api-keys" in notes
    assert f"get secret {RELEASE}-auth -o jsonpath='{{.data.jwtSecret}}'" in notes
    assert 'clarion listen ws://localhost:8080/ws --token "$TOKEN"' in notes
    assert "--user u1 --api-key" in notes


# -- where the chart meets the operator ------------------------------------------


@pytest.mark.parametrize("name", ["default", "production", "dev"])
def test_what_the_operator_makes_from_the_chart_gateway_fits_the_chart(name: str) -> None:
    """Build the operator's Deployment and Service from the rendered gateway (its own code)
    and check they validate, and that every reference between them and the chart holds."""
    resources = pytest.importorskip("clarion_operator.resources")
    spec_mod = pytest.importorskip("clarion_operator.spec")
    sets, _ = COMBOS[name]
    docs = combo(name)
    gw = one(docs, "WebSocketGateway")
    gw_name = gw["metadata"]["name"]
    spec = spec_mod.GatewaySpec.parse(gw["spec"])
    owner = {**gw, "metadata": {**gw["metadata"], "uid": "0000-test"}}
    dep = resources.deployment(gw_name, NAMESPACE, spec, owner, spec.min_replicas)
    svc = resources.service(gw_name, NAMESPACE, spec, owner)
    kubernetes_validate([dep, svc])
    # Limits, probes, non-root, and a read-only root except with the dev values
    # (Tilt's live update writes code into the gateway containers).
    assert policy_violations([dep], read_only_root=name != "dev") == []
    assert gw["spec"]["readOnlyRootFilesystem"] is (name != "dev")

    pod = dep["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["image"] == gw["spec"]["image"]
    assert container["resources"] == gw["spec"]["resources"]
    # Every Secret the pods read is rendered with that key, or is an existingSecret.
    secrets = {d["metadata"]["name"]: secret_data(d) for d in find(docs, "Secret")}
    existing = {s.split("=", 1)[1] for s in sets if ".existingSecret=" in s}
    for env in container["env"]:
        ref = (env.get("valueFrom") or {}).get("secretKeyRef")
        if ref and ref["name"] not in existing:
            assert secrets[ref["name"]].get(ref["key"]), f"{env['name']}: {ref} is not rendered"
    # The chart's selectors find the operator's objects.
    pod_labels = pod["metadata"]["labels"]
    pdb = one(docs, "PodDisruptionBudget", gw_name)
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert names.HTTP_PORT_NAME in ports  # NOTES: port-forward pod/... 8080:http
    annotations = pod["metadata"].get("annotations") or {}
    monitors = find(docs, "ServiceMonitor", gw_name)
    # Scraped once: annotations, or a ServiceMonitor, never both; /metrics is on "api".
    assert (annotations.get("prometheus.io/scrape") == "true") is (not monitors)
    if not monitors:
        assert int(annotations["prometheus.io/port"]) == ports["api"]
    api = resources.api_service(gw_name, NAMESPACE, spec, owner)
    kubernetes_validate([api])
    for monitor in monitors:
        assert (
            monitor["spec"]["selector"]["matchLabels"].items() <= api["metadata"]["labels"].items()
        )
        port = monitor["spec"]["endpoints"][0]["port"]
        assert port in {p["name"] for p in api["spec"]["ports"]}
        assert port not in {p["name"] for p in svc["spec"]["ports"]}  # scraped on one Service
    # New credentials roll the pods: the chart's checksum reaches the pod template.
    assert (
        annotations["checksum/credentials"] == gw["spec"]["podAnnotations"]["checksum/credentials"]
    )
