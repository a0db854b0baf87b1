"""Helpers for the chart tests: the real helm and kubectl, rendering, validation, policies."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate as k8s_validate
import pytest
import yaml
from packaging.version import Version
from referencing import Registry, Resource

from tests.support import REPO

#: CLARION_CHART renders another copy (an older commit's, to see a test fail before its fix).
CHART = Path(os.environ.get("CLARION_CHART", REPO / "charts" / "clarion"))
CRD_FILE = CHART / "crds" / "websocketgateways.yaml"
PEERING_CRD_FILE = CHART / "crds" / "kopf-peering.yaml"
DASHBOARD = CHART / "dashboards" / "clarion.json"
DEV_DIR = REPO / "k8s" / "dev"
DEV_VALUES = DEV_DIR / "values-dev.yaml"
RELEASE = "clarion"
NAMESPACE = "clarion-test"
#: The Kubernetes version the manifests are validated against (kind's current line).
KUBE_VERSION = "1.33"
#: Kinds that are custom resources: kubernetes-validate has no schema for them.
CUSTOM_KINDS = {
    "WebSocketGateway",
    "ServiceMonitor",
    "KopfPeering",
    "ClusterKopfPeering",
    "HTTPRoute",
}

Doc = dict[str, Any]
#: Containers without a liveness probe, as the RabbitMQ cluster operator's broker.
NO_LIVENESS_PROBE = {"rabbitmq"}
RBAC_FIELDS = ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs")


def tool(name: str) -> str:
    """A binary from PATH (the test runner puts .tools first), else the repo's .tools/."""
    found = shutil.which(name)
    if found:
        return found
    local = REPO / ".tools" / name
    if local.exists():
        return str(local)
    pytest.fail(f"{name} not found on PATH or in .tools/ (run scripts/services.sh)")


def run(
    cmd: list[str], stdin: str | None = None, check: bool = True, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=60, cwd=cwd)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}\n"
            f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


def helm_template_cmd(
    sets: Iterable[str] = (), values: Iterable[Path] = (), extra: Iterable[str] = ()
) -> list[str]:
    cmd = [tool("helm"), "template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    cmd += ["--kube-version", KUBE_VERSION]
    for v in values:
        cmd += ["--values", str(v)]
    for s in sets:
        cmd += ["--set", s]
    return cmd + list(extra)


@cache
def _render(sets: tuple[str, ...], values: tuple[Path, ...], include_crds: bool) -> str:
    extra = ["--include-crds"] if include_crds else []
    return run(helm_template_cmd(sets, values, extra)).stdout


def render_text(
    sets: Iterable[str] = (), values: Iterable[Path] = (), include_crds: bool = False
) -> str:
    return _render(tuple(sets), tuple(values), include_crds)


def load_docs(text: str) -> list[Doc]:
    """The documents of a manifest, through libyaml: with the dashboard's JSON in a
    ConfigMap, PyYAML's pure-Python loader was most of the chart tests' CPU."""
    return [d for d in yaml.load_all(text, Loader=yaml.CSafeLoader) if d]


def load_doc(text: str) -> Doc:
    """The one document of a manifest (``helm template --show-only``)."""
    (doc,) = load_docs(text)
    return doc


def render(
    sets: Iterable[str] = (), values: Iterable[Path] = (), include_crds: bool = False
) -> list[Doc]:
    return load_docs(render_text(sets, values, include_crds))


def find(docs: list[Doc], kind: str, name: str | None = None) -> list[Doc]:
    return [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]


def one(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


@cache
def _strict_validator(kind: str, api_version: str) -> jsonschema.Validator | None:
    """kubernetes-validate's strict schema of a kind for KUBE_VERSION, loaded as its
    ``validate()`` loads it, but once: ``validate()`` reads the schemas (1.4 MB of JSON)
    again for every resource. None where it has no schema for the kind."""
    wanted = Version(KUBE_VERSION)
    versions = [v for v in k8s_validate.utils.all_versions() if Version(v) <= wanted]
    base = resources.files("kubernetes_validate") / "kubernetes-json-schema"
    folder = base / f"v{versions[-1]}-local-strict"
    group = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)  # apps/v1 -> apps-v1
    file = folder / f"{kind.lower()}-{group}.json"
    if not file.is_file():
        return None
    schema = json.loads(file.read_text())
    definitions = json.loads((folder / "_definitions.json").read_text())
    registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.Draft202012Validator(schema, registry=registry)


def kubernetes_validate(docs: list[Doc]) -> str:
    """Validate the built-in kinds as `kubernetes-validate --strict -k KUBE_VERSION` does,
    in this process with each schema loaded once (the command's start-up and its reading
    of the schemas for every resource were a fifth of the quick run's CPU); return the
    report, a line a resource. A kind without a schema fails: it would not be checked."""
    report, problems = [], []
    for d in docs:
        if d["kind"] in CUSTOM_KINDS:
            continue
        at = f"{d['kind'].lower()}/{d.get('metadata', {}).get('name')}"
        validator = _strict_validator(d["kind"], d["apiVersion"])
        if validator is None:
            problems.append(f"WARN {at}: no schema for {d['apiVersion']} {d['kind']}")
            continue
        error = jsonschema.exceptions.best_match(validator.iter_errors(d))
        if error is not None:
            path = ".".join(str(p) for p in error.path)
            problems.append(f"ERROR {at} did not validate: {path}: {error.message}")
        else:
            report.append(f"INFO passed for resource {at} against version {KUBE_VERSION}")
    assert problems == [], "kubernetes-validate failed:\n" + "\n".join(problems)
    return "\n".join(report)


def pod_specs(docs: list[Doc]) -> Iterator[tuple[str, Doc]]:
    """(object name, pod spec) of every workload in the manifests."""
    for d in docs:
        kind = d["kind"]
        if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
            yield f"{kind}/{d['metadata']['name']}", d["spec"]["template"]["spec"]
        elif kind == "CronJob":
            yield (
                f"{kind}/{d['metadata']['name']}",
                d["spec"]["jobTemplate"]["spec"]["template"]["spec"],
            )
        elif kind == "Pod":
            yield f"{kind}/{d['metadata']['name']}", d["spec"]


def policy_violations(docs: list[Doc], read_only_root: bool = True) -> list[str]:
    """What breaks the house rules: limits, probes, non-root, read-only root, no wildcard RBAC."""
    problems: list[str] = []
    for where, spec in pod_specs(docs):
        pod_sc = spec.get("securityContext") or {}
        containers = [*spec.get("initContainers", []), *spec.get("containers", [])]
        assert containers, f"{where} has no containers"
        for c in containers:
            at = f"{where} container {c['name']}"
            res = c.get("resources") or {}
            for part in ("requests", "limits"):
                for r in ("cpu", "memory"):
                    if r not in (res.get(part) or {}):
                        problems.append(f"{at}: no {part}.{r}")
            # A Job's container runs to completion: nothing to probe. RabbitMQ has
            # no liveness probe (a restart interrupts a slow boot or a drain).
            if c in spec.get("containers", []) and not where.startswith(("Job/", "CronJob/")):
                wanted = ["readinessProbe"]
                if c["name"] not in NO_LIVENESS_PROBE:
                    wanted.append("livenessProbe")
                for probe in wanted:
                    if probe not in c:
                        problems.append(f"{at}: no {probe}")
            sc = c.get("securityContext") or {}
            if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is not True:
                problems.append(f"{at}: runAsNonRoot is not true")
            if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
                problems.append(f"{at}: runs as uid 0")
            if read_only_root and sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{at}: readOnlyRootFilesystem is not true")
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{at}: allowPrivilegeEscalation is not false")
            if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
                problems.append(f"{at}: capabilities do not drop ALL")
    for d in docs:
        if d["kind"] in ("Role", "ClusterRole"):
            for rule in d.get("rules") or []:
                for field in RBAC_FIELDS:
                    if any("*" in str(v) for v in rule.get(field) or []):
                        problems.append(f"{d['kind']}/{d['metadata']['name']}: * in {field}")
    return problems


def load_yaml_file(path: Path) -> list[Doc]:
    return load_docs(path.read_text())


def crd_schema(path: Path, kind: str) -> dict[str, Any]:
    """The openAPIV3Schema of a CRD's storage version."""
    for crd in load_yaml_file(path):
        if crd["spec"]["names"]["kind"] == kind:
            for version in crd["spec"]["versions"]:
                if version.get("storage"):
                    return dict(version["schema"]["openAPIV3Schema"])
    raise AssertionError(f"no CRD for {kind} in {path}")


def closed_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy where objects with declared properties reject unknown ones.

    The API server silently prunes unknown fields of a structural schema; for a
    chart that is a typo nobody notices, so the test treats them as errors.
    The root stays open: apiVersion, kind and metadata are implicit there, and so
    does metadata (a CRD may bound its name, the API server fills in the rest).
    """
    out: dict[str, Any] = _closed(schema)
    out.pop("additionalProperties", None)
    out.get("properties", {}).get("metadata", {}).pop("additionalProperties", None)
    return out


def _closed(schema: Any) -> Any:
    if isinstance(schema, dict):
        out = {k: _closed(v) for k, v in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_closed(v) for v in schema]
    return schema
