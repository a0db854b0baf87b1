"""k8s/ (kind config, dev kustomization), the Tiltfile and the Dockerfiles.

kind, Tilt and a container engine cannot run here: these tests check what can
be checked without them (schemas, real paths, kustomize's output, promtool).
"""

from __future__ import annotations

import ast
import json
import re
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.support import REPO

from .helpers import (
    DASHBOARD,
    DEV_DIR,
    DEV_VALUES,
    Doc,
    find,
    helm_template_cmd,
    kubernetes_validate,
    load_docs,
    one,
    policy_violations,
    render,
    run,
    tool,
)

KIND_CONFIG = REPO / "k8s" / "kind" / "cluster.yaml"
TILTFILE = REPO / "Tiltfile"
#: One Dockerfile, two images: its targets gateway and operator.
DOCKERFILE = REPO / "Dockerfile"


@cache
def _kustomize_text() -> str:
    return run([tool("kubectl"), "kustomize", str(DEV_DIR)]).stdout


def kustomize() -> list[Doc]:
    return load_docs(_kustomize_text())


# -- the dev kustomization ----------------------------------------------------------


def test_dev_kustomization_renders_and_validates() -> None:
    docs = kustomize()
    kubernetes_validate(docs)
    assert policy_violations(docs) == []
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} <= {
        "monitoring",
        None,  # cluster-scoped RBAC
    }
    assert {f"{d['kind']}/{d['metadata']['name']}" for d in docs} >= {
        "Deployment/prometheus",
        "Deployment/grafana",
        "Service/prometheus",
        "Service/grafana",
    }


def test_dashboard_copies_are_the_same_file() -> None:
    copy = DEV_DIR / "grafana" / "clarion.json"
    assert copy.read_bytes() == DASHBOARD.read_bytes(), (
        "k8s/dev/grafana/clarion.json differs from the chart's dashboard: "
        "cp charts/clarion/dashboards/clarion.json k8s/dev/grafana/clarion.json"
    )


def test_grafana_is_provisioned_with_prometheus_and_the_dashboard() -> None:
    docs = kustomize()
    grafana = one(docs, "Deployment", "grafana")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in grafana["volumes"]}
    mounts = {m["mountPath"]: m for m in grafana["containers"][0]["volumeMounts"]}
    configmaps = {d["metadata"]["name"]: d for d in find(docs, "ConfigMap")}

    dash_mount = mounts["/etc/grafana/dashboards"]
    dash_cm = configmaps[volumes[dash_mount["name"]]["configMap"]["name"]]
    assert json.loads(dash_cm["data"]["clarion.json"]) == json.loads(DASHBOARD.read_text())

    prov = configmaps[volumes["provisioning"]["configMap"]["name"]]["data"]
    providers = yaml.safe_load(prov["dashboards.yaml"])["providers"]
    assert providers[0]["options"]["path"] == "/etc/grafana/dashboards"
    (ds,) = yaml.safe_load(prov["datasources.yaml"])["datasources"]
    prom_svc = one(docs, "Service", "prometheus")
    port = prom_svc["spec"]["ports"][0]["port"]
    assert ds["type"] == "prometheus"
    assert ds["url"] == f"http://prometheus.{prom_svc['metadata']['namespace']}.svc:{port}"
    # The dashboard's datasource variable picks Prometheus data sources.
    variables = {v["name"]: v for v in json.loads(DASHBOARD.read_text())["templating"]["list"]}
    assert variables["datasource"]["query"] == ds["type"]


def test_prometheus_config(tmp_path: Path) -> None:
    """promtool checks the dev Prometheus config; it keeps the labels the dashboard uses."""
    source = DEV_DIR / "prometheus" / "prometheus.yml"
    config = yaml.safe_load(source.read_text())
    (job,) = config["scrape_configs"]
    targets = {r.get("target_label") for r in job["relabel_configs"]}
    assert {"namespace", "pod", "gateway", "__address__", "__metrics_path__"} <= targets
    proc = run([tool("promtool"), "check", "config", str(source)], check=False)
    if proc.returncode != 0:
        # Debian's Prometheus is built without Kubernetes discovery: check everything
        # else with the discovery swapped for a static target.
        assert "kubernetes_sd_configs not found" in proc.stdout + proc.stderr, proc
        job.pop("kubernetes_sd_configs")
        job["static_configs"] = [{"targets": ["127.0.0.1:8080"]}]
        swapped = tmp_path / "prometheus.yml"
        swapped.write_text(yaml.safe_dump(config))
        run([tool("promtool"), "check", "config", str(swapped)])
    rules = one(kustomize(), "ClusterRole", "clarion-dev-prometheus")["rules"]
    assert rules == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]


# -- the kind cluster config ---------------------------------------------------------

_STR = {"type": "string"}
_PATCH = {
    "type": "object",
    "additionalProperties": False,
    "required": ["group", "version", "kind", "patch"],
    "properties": {"group": _STR, "version": _STR, "kind": _STR, "patch": _STR},
}
#: kind's v1alpha4 Cluster (sigs.k8s.io/kind pkg/apis/config/v1alpha4/types.go) as a schema.
KIND_CLUSTER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["kind", "apiVersion"],
    "properties": {
        "kind": {"const": "Cluster"},
        "apiVersion": {"const": "kind.x-k8s.io/v1alpha4"},
        "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
        "nodes": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "role": {"enum": ["control-plane", "worker"]},
                    "image": _STR,
                    "labels": {"type": "object", "additionalProperties": _STR},
                    "extraMounts": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "containerPath": _STR,
                                "hostPath": _STR,
                                "readOnly": {"type": "boolean"},
                                "selinuxRelabel": {"type": "boolean"},
                                "propagation": {
                                    "enum": ["None", "HostToContainer", "Bidirectional"]
                                },
                            },
                        },
                    },
                    "extraPortMappings": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "containerPort": {"type": "integer"},
                                "hostPort": {"type": "integer"},
                                "listenAddress": _STR,
                                "protocol": {"enum": ["TCP", "UDP", "SCTP"]},
                            },
                        },
                    },
                    "gpus": _STR,
                    "kubeadmConfigPatches": {"type": "array", "items": _STR},
                    "kubeadmConfigPatchesJSON6902": {"type": "array", "items": _PATCH},
                },
            },
        },
        "networking": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "ipFamily": {"enum": ["ipv4", "ipv6", "dual"]},
                "apiServerPort": {"type": "integer"},
                "apiServerAddress": _STR,
                "podSubnet": _STR,
                "serviceSubnet": _STR,
                "disableDefaultCNI": {"type": "boolean"},
                "kubeProxyMode": {"enum": ["iptables", "ipvs", "nftables", "none"]},
                "dnsSearch": {"type": "array", "items": _STR},
            },
        },
        "featureGates": {"type": "object", "additionalProperties": {"type": "boolean"}},
        "runtimeConfig": {"type": "object", "additionalProperties": _STR},
        "kubeadmConfigPatches": {"type": "array", "items": _STR},
        "kubeadmConfigPatchesJSON6902": {"type": "array", "items": _PATCH},
        "containerdConfigPatches": {"type": "array", "items": _STR},
        "containerdConfigPatchesJSON6902": {"type": "array", "items": _STR},
    },
}


def test_kind_config_matches_the_v1alpha4_schema() -> None:
    config = yaml.safe_load(KIND_CONFIG.read_text())
    jsonschema.Draft202012Validator(KIND_CLUSTER_SCHEMA).validate(config)
    roles = [n.get("role", "control-plane") for n in config["nodes"]]
    assert roles.count("control-plane") == 1 and roles.count("worker") >= 1
    # The Tiltfile only deploys to this cluster's context.
    assert f"allow_k8s_contexts('kind-{config['name']}')" in TILTFILE.read_text()
    broken = {**config, "nodes": [{"role": "worker", "extraPortMapping": []}]}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(KIND_CLUSTER_SCHEMA).validate(broken)


# -- the Tiltfile -----------------------------------------------------------------------

PATH_RE = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*/?$")


def _tilt_tree() -> ast.Module:
    # Starlark's syntax is a subset of Python's: the Tiltfile parses as Python.
    return ast.parse(TILTFILE.read_text(), filename="Tiltfile")


def _constants(tree: ast.Module) -> dict[str, str]:
    return {
        node.targets[0].id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and isinstance(node.targets[0], ast.Name)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    }


def _calls(tree: ast.Module, name: str) -> list[ast.Call]:
    return [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == name
    ]


def test_tiltfile_names_only_paths_that_exist() -> None:
    tree = _tilt_tree()
    optional = {  # literals only used behind os.path.exists(...)
        a.value
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and ast.unparse(n.func) == "os.path.exists"
        for a in n.args
        if isinstance(a, ast.Constant)
    }
    literals = {
        n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
    }
    paths = {
        s
        for s in literals
        if PATH_RE.match(s) and ("/" in s or Path(s).suffix) and not s.startswith("/")
    } - optional
    # Dotted names that are not files (API groups, CRD names, domains) are not paths.
    paths = {p for p in paths if "/" in p or (REPO / p).suffix in {".toml", ".yaml", ".json"}}
    paths |= literals & {"Dockerfile"}  # a file name without a suffix
    missing = sorted(p for p in paths if not (REPO / p).exists())
    assert missing == []
    assert paths >= {
        "charts/clarion",
        "k8s/dev",
        "k8s/dev/values-dev.yaml",
        "Dockerfile",
        "scripts/dev-reload.sh",
        "service/clarion",
        "operator/clarion_operator",
        "pyproject.toml",
    }


def test_tiltfile_live_update_targets_the_images_site_packages() -> None:
    tree = _tilt_tree()
    site = _constants(tree)["SITE"]
    pyver = re.search(r"python(3\.\d+)", site)
    assert pyver
    text = DOCKERFILE.read_text()
    assert re.search(rf"python:{re.escape(pyver.group(1))}\.\d+-slim", text)
    assert "/opt/venv" in text and site.startswith("/opt/venv/")
    assert f"site={site}\n" in (REPO / "scripts/dev-reload.sh").read_text()
    builds = _calls(tree, "docker_build")
    refs = {ast.literal_eval(b.args[0]) for b in builds}
    dev = yaml.safe_load(DEV_VALUES.read_text())
    assert refs == {dev["image"]["repository"], dev["operator"]["image"]["repository"]}
    stages = dockerfile_stages()
    targets = set()
    for b in builds:
        kw = {k.arg: k.value for k in b.keywords}
        assert ast.literal_eval(kw["dockerfile"]) == "Dockerfile"
        target = ast.literal_eval(kw["target"])
        assert target.endswith("-dev") and "dev-reload.sh" in stages[target][1]
        targets.add(target)
    assert targets == {"gateway-dev", "operator-dev"}


def test_tiltfile_resources_exist_in_the_manifests() -> None:
    """Every k8s_resource names a workload the chart (dev values) or k8s/dev renders."""
    tree = _tilt_tree()
    consts = _constants(tree)
    docs = render(values=[DEV_VALUES], include_crds=True) + kustomize()
    workloads = {
        d["metadata"]["name"]
        for d in docs
        if d["kind"] in ("Deployment", "StatefulSet", "WebSocketGateway")
    }
    objects = {f"{d['metadata']['name']}:{d['kind'].lower()}" for d in docs}
    for call in _calls(tree, "k8s_resource"):
        kw = {k.arg: k.value for k in call.keywords}
        if call.args:
            arg = call.args[0]
            name = consts[arg.id] if isinstance(arg, ast.Name) else ast.literal_eval(arg)
            assert name in workloads, f"k8s_resource({name!r}): no such workload"
        else:
            assert "new_name" in kw
        listed = kw.get("objects")
        if isinstance(listed, ast.List):
            for element in listed.elts:
                if isinstance(element, ast.BinOp) and isinstance(element.left, ast.Name):
                    selector = consts[element.left.id] + ast.literal_eval(element.right)
                else:
                    selector = ast.literal_eval(element)
                assert selector in objects, f"object {selector!r} is not rendered"


def _tilt_chart_command(tree: ast.Module) -> list[str]:
    """The helm command the Tiltfile renders the chart with (its CHART_CMD list)."""
    consts = _constants(tree)
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id == "CHART_CMD"
        ):
            assert isinstance(node.value, ast.List)
            return [
                consts[e.id] if isinstance(e, ast.Name) else ast.literal_eval(e)
                for e in node.value.elts
            ]
    raise AssertionError("the Tiltfile has no CHART_CMD")


def test_tiltfile_renders_the_chart_without_its_hooks() -> None:
    """Tilt applies everything it is given: the pre-delete hook would run as a plain Job
    and delete the dev gateway. Render as the Tiltfile does, with the real helm."""
    tree = _tilt_tree()
    assert _calls(tree, "helm") == [], "Tilt's helm() renders hooks as ordinary objects"
    cmd = _tilt_chart_command(tree)
    assert cmd[:2] == ["helm", "template"] and "--no-hooks" in cmd
    assert any(ast.unparse(c.args[0]) == "CHART_CMD" for c in _calls(tree, "local"))
    docs = load_docs(run([tool("helm"), *cmd[1:]], cwd=REPO).stdout)
    assert docs and not [
        d for d in docs if "helm.sh/hook" in (d["metadata"].get("annotations") or {})
    ]
    kinds = {d["kind"] for d in docs}
    assert {"CustomResourceDefinition", "WebSocketGateway", "StatefulSet"} <= kinds
    watched = {ast.literal_eval(c.args[0]) for c in _calls(tree, "watch_file")}
    assert {"charts/clarion", "k8s/dev/values-dev.yaml"} <= watched


# -- images --------------------------------------------------------------------------


def dockerfile_stages() -> dict[str, tuple[str, str]]:
    """The Dockerfile's stages: name -> (what it is built FROM, its lines)."""
    stages: dict[str, tuple[str, str]] = {}
    current = ""
    for line in DOCKERFILE.read_text().splitlines():
        m = re.match(r"^FROM\s+(\S+)\s+AS\s+(\S+)", line)
        if m:
            current = m.group(2)
            stages[current] = (m.group(1), "")
        elif current:
            stages[current] = (stages[current][0], stages[current][1] + line + "\n")
    return stages


def test_one_dockerfile_builds_both_images_on_one_base() -> None:
    text = DOCKERFILE.read_text()
    stages = dockerfile_stages()
    assert list(stages) == [
        "builder",
        "base",
        "operator",
        "operator-dev",
        "gateway-base",
        "gateway-dev",
        "gateway",
    ]
    # The default (last) stage is the gateway; every image is built on base.
    assert stages["gateway"] == ("gateway-base", "")
    assert stages["operator"][0] == stages["gateway-base"][0] == "base"
    assert stages["operator-dev"][0] == "operator" and stages["gateway-dev"][0] == "gateway-base"
    image = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    assert image and re.fullmatch(r"python:3\.11\.\d+-slim-\w+", image.group(1)), "pin the base"
    assert "build-essential" in stages["builder"][1]
    assert "apt-get" not in text.split("AS base", 1)[1], "no build tools in an image"
    user = re.search(r"^RUN groupadd --system --gid (\d+)", stages["base"][1], re.M)
    chart_values = yaml.safe_load((REPO / "charts/clarion/values.yaml").read_text())
    assert user and int(user.group(1)) == chart_values["operator"]["securityContext"]["runAsUser"]
    for src in re.findall(r"^COPY (?!--)(\S+)", text, re.M):
        if "[" not in src:
            assert (REPO / src).exists(), f"the Dockerfile copies {src}, which does not exist"


@pytest.mark.parametrize(
    ("stage", "package", "cmd", "ports"),
    [
        ("gateway-base", "clarion", '["clarion", "serve"]', "8080"),
        ("operator", '"clarion[operator]"', '["clarion-operator"]', "8080 9090"),
    ],
)
def test_dockerfile_image(stage: str, package: str, cmd: str, ports: str) -> None:
    body = dockerfile_stages()[stage][1]
    assert f"--find-links /wheels {package}\n" in body
    user = re.search(r"^USER (\d+):(\d+)$", body, re.M)
    assert user and int(user.group(1)) > 0
    assert f"CMD {cmd}" in body and "ENTRYPOINT" not in body
    assert f"EXPOSE {ports}\n" in body
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert json.loads(cmd)[0] in scripts


def test_dockerignore_keeps_only_what_the_images_need() -> None:
    lines = [
        s
        for s in (REPO / ".dockerignore").read_text().splitlines()
        if s.strip() and not s.startswith("#")
    ]
    assert lines[0] == "*"
    allowed = {s[1:].rstrip("/") for s in lines if s.startswith("!")}
    assert allowed >= {"pyproject.toml", "service", "operator"}


def test_kubernetes_docs_name_real_paths_and_the_notes_commands() -> None:
    text = (REPO / "docs" / "kubernetes.md").read_text()
    blocks = "\n".join(re.findall(r"```sh\n(.*?)```", text, re.S))
    for path in re.findall(r"(?<![\w/.-])((?:charts|k8s|service|operator)/[\w./-]*\w)", blocks):
        assert (REPO / path).exists(), f"docs/kubernetes.md names {path}, which does not exist"
    dev = yaml.safe_load(DEV_VALUES.read_text())
    assert f"-t {dev['image']['repository']}:{dev['image']['tag']} ." in blocks
    assert f"-t {dev['operator']['image']['repository']}:{dev['operator']['image']['tag']} ." in (
        blocks
    )
    for line in (
        "kubectl -n clarion port-forward pod/$POD0 8080:http 9080:api &",
        "kubectl -n clarion port-forward pod/$POD1 8081:http 9081:api &",
        "clarion listen ws://localhost:8080/ws --user u1 &",
        # Publishing goes to the internal api port.
        'clarion publish --url http://localhost:9081 --user u1 --api-key "$API_KEY"',
        "kind create cluster --config k8s/kind/cluster.yaml",
    ):
        assert line in blocks, line


def test_dev_values_render_the_same_twice() -> None:
    """Tilt re-renders the chart on every change: nothing random may roll (restarts, lost auth)."""
    first, second = (run(helm_template_cmd(values=[DEV_VALUES])).stdout for _ in range(2))
    assert first == second
