"""Every name the chart and the operator generate fits its own limit, for every legal name.

Helm allows release names of 1-53 characters (lower-case letters, digits, '-' and
'.'); the CRD bounds a gateway's name. Each limit is Kubernetes' own:

- a Service name is a DNS-1035 label (63 characters, starts with a letter);
- a StatefulSet's name goes into its pods' ``controller-revision-hash`` label with a
  hash of up to 10 characters, so it has 52 (kubernetes/kubernetes#64023);
- a Deployment's pods are ``<name>-<hash of up to 10>-<5 random>``, and the API server
  cuts the part before the random five to 58 characters: a gateway name of at most 46
  keeps its pod names whole (the dashboard's Gateway variable reads them);
- every label value has 63 characters;
- no two objects of one kind share a name in one namespace.

Rendered with the real helm, one ``helm template`` per release name.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import Any

import jsonschema
import pytest
import yaml

from clarion import names

from .helpers import (
    CHART,
    CRD_FILE,
    CUSTOM_KINDS,
    KUBE_VERSION,
    Doc,
    crd_schema,
    kubernetes_validate,
    load_doc,
    load_docs,
    run,
    tool,
)

pytestmark = pytest.mark.timeout(120)

NAMESPACE = "clarion-names"
#: Helm's own limit (helm/pkg/chartutil: releaseNameMaxLen).
RELEASE_MAX = 53
DNS1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
#: Longest pod-template-hash (a uint32 in Kubernetes' safe alphabet) and random suffix.
POD_HASH, POD_RANDOM, GENERATED_BASE_MAX = 10, 5, 58
#: Everything a release can render at once, and the single-node broker.
EVERYTHING = [
    "rabbitmq.replicas=3",
    "networkPolicy.enabled=true",
    "metrics.serviceMonitor.enabled=true",
    "rabbitmq.password=p",
    "rabbitmq.erlangCookie=c",
]
SINGLE = ["networkPolicy.enabled=true", "metrics.serviceMonitor.enabled=true"]


def release_name(length: int, shape: str) -> str:
    """A legal Helm release name of this length: plain, holding "clarion", from a digit, dotted."""
    stem = {
        "plain": "push-gateway-production-eu-west-",
        "clarion": "clarion-push-eu-west-",
        "digit": "1st-push-",
        "dotted": "push.eu-west.",
    }[shape]
    name = (stem * 4)[:length]
    return name[:-1] + "x" if name[-1] in "-." else name


def render(release: str, sets: list[str]) -> list[Doc]:
    cmd = [tool("helm"), "template", release, str(CHART), "--namespace", NAMESPACE]
    cmd += ["--kube-version", KUBE_VERSION]
    for s in sets:
        cmd += ["--set", s]
    return load_docs(run(cmd).stdout)


def label_maps(obj: Any, key: str = "") -> Iterator[dict[str, str]]:
    """Every label map in an object: labels, matchLabels, selectors of Services."""
    if isinstance(obj, dict):
        if key in ("labels", "matchLabels") or (key == "selector" and "matchLabels" not in obj):
            if all(isinstance(v, str) for v in obj.values()):
                yield obj
                return
        for k, v in obj.items():
            yield from label_maps(v, k)
    elif isinstance(obj, list):
        for v in obj:
            yield from label_maps(v, key)


def name_problems(doc: Doc) -> list[str]:
    kind, name = doc["kind"], doc["metadata"]["name"]
    at = f"{kind}/{name}"
    problems: list[str] = []
    if kind == "Service":
        if not (DNS1035.fullmatch(name) and len(name) <= 63):
            problems.append(f"{at}: not a DNS-1035 label of at most 63")
    elif kind == "StatefulSet":
        if not (DNS1123_LABEL.fullmatch(name) and len(name) <= 52):
            problems.append(f"{at}: longer than 52 (controller-revision-hash) or not a label")
    elif kind in ("Deployment", "Job"):
        if not (DNS1123_LABEL.fullmatch(name) and len(name) <= 63):
            problems.append(f"{at}: not a DNS-1123 label (its pods carry it in a label)")
    elif not (DNS1123_SUBDOMAIN.fullmatch(name) and len(name) <= 253):
        problems.append(f"{at}: not a DNS-1123 subdomain")
    for labels in label_maps(doc):
        for k, v in labels.items():
            if not (LABEL_VALUE.fullmatch(v) and len(v) <= 63):
                problems.append(f"{at}: label {k}={v!r} is not a label value")
            if len(k.rsplit("/", 1)[-1]) > 63:
                problems.append(f"{at}: label key {k} too long")
    return problems


@cache
def dashboard_gateway_regex() -> re.Pattern[str]:
    from .test_dashboard import gateway_variable

    return re.compile(gateway_variable()["regex"].strip("/"))


def gateway_of(pod: str) -> str | None:
    """What Grafana's Gateway variable makes of a pod name."""
    m = dashboard_gateway_regex().fullmatch(pod)
    return m.group(1) if m else None


def pod_name_problems(gateway: str) -> list[str]:
    """The gateway's longest pod name must come out whole, and the dashboard must read it."""
    base = f"{gateway}-{'x' * POD_HASH}-"
    if len(base) > GENERATED_BASE_MAX:
        return [f"gateway {gateway}: the API server cuts its pod names ({base}...)"]
    pod = base + "r" * POD_RANDOM
    if gateway_of(pod) != gateway:
        return [f"gateway {gateway}: the dashboard reads {gateway_of(pod)!r} from {pod}"]
    return []


def operator_objects(gateway: Doc) -> list[Doc]:
    """What the operator makes for a gateway (its own code)."""
    from clarion_operator import resources
    from clarion_operator.spec import GatewaySpec

    name, ns = gateway["metadata"]["name"], gateway["metadata"]["namespace"]
    spec = GatewaySpec.parse(gateway.get("spec") or {"image": "x"})
    owner = {**gateway, "metadata": {**gateway["metadata"], "uid": "0000"}}
    return [body for _, body in resources.owned(name, ns, spec, owner, None)]


def release_problems(release: str, sets: list[str]) -> list[str]:
    docs = render(release, sets)
    problems = [p for d in docs for p in name_problems(d)]
    seen: dict[tuple[str, str, str], int] = {}
    for d in docs:
        key = (d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"])
        seen[key] = seen.get(key, 0) + 1
    problems += [f"{k[0]}/{k[2]}: rendered {n} times" for k, n in seen.items() if n > 1]
    for sts in (d for d in docs if d["kind"] == "StatefulSet"):
        for ordinal in range(sts["spec"]["replicas"]):
            pod = f"{sts['metadata']['name']}-{ordinal}"
            if len(pod) > 63:
                problems.append(f"pod {pod}: longer than 63")
    for gw in (d for d in docs if d["kind"] == "WebSocketGateway"):
        problems += gateway_name_problems(gw)
    return [f"release {release!r} ({len(release)}) {sets[:1]}: {p}" for p in problems]


def gateway_name_problems(gw: Doc) -> list[str]:
    name = gw["metadata"]["name"]
    problems = []
    if not (DNS1035.fullmatch(name) and len(name) <= gateway_name_bound()):
        problems.append(f"gateway {name}: beyond the CRD's bound {gateway_name_bound()}")
    for obj in operator_objects(gw):
        problems += name_problems(obj)
    return problems + pod_name_problems(name)


@cache
def gateway_name_bound() -> int:
    schema = crd_schema(CRD_FILE, names.CRD_KIND)
    bound = schema.get("properties", {}).get("metadata", {}).get("properties", {})
    return int(bound.get("name", {}).get("maxLength", 253))


@pytest.mark.slow  # about 90 renders
def test_every_release_name_renders_names_that_fit() -> None:
    """Release names of every length 1-53 and every shape: names, labels, uniqueness."""
    cases = [(release_name(n, "plain"), EVERYTHING) for n in range(1, RELEASE_MAX + 1)]
    # The other shapes and the single node where names get long (short ones only grow).
    shapes = ("clarion", "digit", "dotted")
    cases += [(release_name(n, shapes[n % 3]), EVERYTHING) for n in range(1, 4)]
    cases += [(release_name(n, shapes[n % 3]), EVERYTHING) for n in range(30, RELEASE_MAX + 1)]
    cases += [(release_name(n, "plain"), SINGLE) for n in range(44, RELEASE_MAX + 1)]
    assert {len(r) for r, _ in cases} == set(range(1, RELEASE_MAX + 1))
    with ThreadPoolExecutor(max_workers=2) as pool:
        found = [p for ps in pool.map(lambda c: release_problems(*c), cases) for p in ps]
    assert found == [], "\n".join(found[:40])


def test_the_crd_bounds_gateway_names_to_what_the_operator_can_name() -> None:
    """Every gateway name the CRD accepts gives names that fit; one more character is refused."""
    from clarion_operator import resources

    bound = gateway_name_bound()
    assert bound == resources.MAX_GATEWAY_NAME
    schema = crd_schema(CRD_FILE, names.CRD_KIND)
    for length in range(1, bound + 1):
        name = ("push-eu-west-" * 5)[:length]
        name = name[:-1] + "x" if name.endswith("-") else name
        gw = {"metadata": {"name": name, "namespace": NAMESPACE}, "spec": {"image": "x"}}
        jsonschema.Draft4Validator(schema).validate({"apiVersion": "clarion.dev/v1alpha1", **gw})
        assert gateway_name_problems(gw) == []
    for bad in ("x" * (bound + 1), "push.eu", "1push"):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.Draft4Validator(schema).validate(
                {"metadata": {"name": bad}, "spec": {"image": "x"}}
            )


@pytest.mark.parametrize("setting", ["gateway.name", "fullnameOverride"])
def test_the_schema_refuses_names_the_templates_cannot_use(setting: str) -> None:
    too_long = "x" * (64 if setting == "fullnameOverride" else gateway_name_bound() + 1)
    for bad in (too_long, "push.eu", "1push", "Push"):
        cmd = [tool("helm"), "template", "r", str(CHART), "--set", f"{setting}={bad}"]
        proc = run(cmd, check=False)
        assert proc.returncode != 0 and "values don't meet the specifications" in proc.stderr, bad


def legal_combinations() -> list[list[str]]:
    """Every combination the schema allows of the switches that change what renders."""
    combos = []
    for replicas in (1, 3, 5):
        for persistence in (True, False):
            if replicas > 1 and not persistence:
                continue  # refused (test_broker_upgrades)
            for np in (True, False):
                for op in (True, False):
                    for sm in (True, False):
                        combos.append(
                            [
                                f"rabbitmq.replicas={replicas}",
                                f"rabbitmq.persistence.enabled={str(persistence).lower()}",
                                f"networkPolicy.enabled={str(np).lower()}",
                                f"operator.enabled={str(op).lower()}",
                                f"metrics.serviceMonitor.enabled={str(sm).lower()}",
                                "rabbitmq.password=p",
                                "rabbitmq.erlangCookie=c",
                            ]
                        )
    return combos


@pytest.mark.slow  # 64 renders and kubernetes-validate
def test_every_legal_combination_validates_with_the_shortest_and_longest_names() -> None:
    """All 32 combinations x release names of 1 and 53: names checked, and every manifest
    through `kubernetes-validate --strict` (one call for all of them: it is the slow part)."""
    combos = legal_combinations()
    assert len(combos) == 32
    cases = [(release_name(n, "plain"), c) for c in combos for n in (1, RELEASE_MAX)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        rendered = list(pool.map(lambda c: render(*c), cases))
    problems = [p for docs in rendered for d in docs for p in name_problems(d)]
    assert problems == [], "\n".join(problems[:20])
    builtin = {
        yaml.dump(d, Dumper=yaml.CSafeDumper, sort_keys=True)
        for docs in rendered
        for d in docs
        if d["kind"] not in CUSTOM_KINDS and d["kind"] != "ConfigMap"
    }
    # ConfigMaps differ only in their data; one of each name is enough.
    maps = {d["metadata"]["name"]: d for docs in rendered for d in docs if d["kind"] == "ConfigMap"}
    docs = [load_doc(t) for t in sorted(builtin)] + list(maps.values())
    kubernetes_validate(docs)
