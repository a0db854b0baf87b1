"""The CRD in the chart: its schema rejects bad specs and defaults like the operator does."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from clarion import names
from clarion.config import default_of, option
from clarion_operator.spec import GatewaySpec, defaults_as_crd

CRDS = Path(__file__).resolve().parents[2] / "charts" / "clarion" / "crds"


def load_crd() -> dict[str, Any]:
    return dict(yaml.safe_load((CRDS / "websocketgateways.yaml").read_text()))


CRD = load_crd()
VERSION = CRD["spec"]["versions"][0]
SCHEMA = VERSION["schema"]["openAPIV3Schema"]
# Kubernetes schemas are OpenAPI v3.0 (draft-4 style: boolean exclusiveMinimum);
# the x-kubernetes-* keywords are ignored by jsonschema.
VALIDATOR = jsonschema.Draft4Validator(SCHEMA)


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Structural defaulting as the API server does it: absent fields get their default."""
    if schema.get("type") != "object" or not isinstance(value, dict):
        return value
    result = dict(value)
    for key, sub in schema.get("properties", {}).items():
        if key not in result and "default" in sub:
            result[key] = copy.deepcopy(sub["default"])
        if key in result:
            result[key] = apply_defaults(sub, result[key])
    return result


def gateway(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{names.CRD_GROUP}/{names.CRD_VERSION}",
        "kind": names.CRD_KIND,
        "metadata": {"name": "gw"},
        "spec": spec,
    }


def test_coordinates_match_the_shared_names() -> None:
    spec = CRD["spec"]
    assert CRD["metadata"]["name"] == f"{names.CRD_PLURAL}.{names.CRD_GROUP}"
    assert spec["group"] == names.CRD_GROUP and spec["scope"] == "Namespaced"
    assert spec["names"]["plural"] == names.CRD_PLURAL
    assert spec["names"]["kind"] == names.CRD_KIND
    assert spec["names"]["shortNames"] == ["wsgw"]
    assert VERSION["name"] == names.CRD_VERSION and VERSION["storage"]
    # `kubectl scale` sets the autoscaler's floor; status.selector is written by apply.
    assert VERSION["subresources"] == {
        "status": {},
        "scale": {
            "specReplicasPath": ".spec.replicas.min",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        },
    }
    assert {"observedGeneration", "selector"} <= set(SCHEMA["properties"]["status"]["properties"])
    # Every column shows in a plain `kubectl get wsgw` (priority 0), Ready included.
    assert all(c.get("priority", 0) == 0 for c in VERSION["additionalPrinterColumns"])
    columns = {c["name"]: c["jsonPath"] for c in VERSION["additionalPrinterColumns"]}
    assert columns["Ready"] == ".status.readyReplicas"
    assert columns["Replicas"] == ".status.replicas"
    assert columns["Connections"] == ".status.connections"
    assert columns["Desired"] == ".status.desiredReplicas"
    assert columns["Age"] == ".metadata.creationTimestamp"


def test_schema_is_a_valid_schema() -> None:
    jsonschema.Draft4Validator.check_schema(SCHEMA)


def test_minimal_and_full_specs_are_valid() -> None:
    VALIDATOR.validate(gateway({"image": "ghcr.io/example/clarion:0.1.0"}))
    full = apply_defaults(SCHEMA["properties"]["spec"], {"image": "img"})
    VALIDATOR.validate(gateway(full))


@pytest.mark.parametrize(
    "spec",
    [
        {},  # image is required
        {"image": ""},
        {"image": "i", "replicas": {"min": 0}},
        {"image": "i", "replicas": {"max": "ten"}},
        {"image": "i", "auth": {"mode": "oauth"}},
        {"image": "i", "service": {"type": "ExternalName"}},
        {"image": "i", "service": {"port": 70000}},
        {"image": "i", "scaling": {"targetConnectionsPerPod": 0}},
        {"image": "i", "scaling": {"intervalSeconds": 0}},
        {"image": "i", "scaling": {"maxScaleDownStep": 0}},
        {"image": "i", "scaling": {"rebalance": "yes"}},
        {"image": "i", "queueCleanup": {"graceSeconds": -1}},
        {"image": "i", "broker": {"urlSecretRef": {"name": ""}}},
        {"image": "i", "broker": {"routing": "topic"}},
        {"image": "i", "broker": {"routing": "Direct"}},
        {"image": "i", "imagePullSecrets": [{}]},
        {"image": "i", "imagePullSecrets": ["regcred"]},
        {"image": "i", "nodeSelector": {"disk": 1}},
        {"image": "i", "probes": {"readiness": {"timeoutSeconds": 0}}},
        {"image": "i", "automountServiceAccountToken": "no"},
        {"image": "i", "service": {"loadBalancerSourceRanges": "10.0.0.0/8"}},
    ],
)
def test_invalid_specs_are_rejected(spec: dict[str, Any]) -> None:
    with pytest.raises(jsonschema.ValidationError):
        VALIDATOR.validate(gateway(spec))


def test_crd_defaults_are_the_operator_defaults() -> None:
    defaulted = apply_defaults(SCHEMA["properties"]["spec"], {"image": "img"})
    assert {k: v for k, v in defaulted.items() if k != "image"} == defaults_as_crd()
    assert GatewaySpec.parse(defaulted) == GatewaySpec.parse({"image": "img"})


def test_routing_is_the_gateway_setting() -> None:
    """``broker.routing`` takes exactly the gateway's ``--routing`` values and default."""
    field = SCHEMA["properties"]["spec"]["properties"]["broker"]["properties"]["routing"]
    assert tuple(field["enum"]) == option("routing").choices
    assert field["default"] == default_of("routing")
    assert field["description"]
    for value in option("routing").choices or ():
        spec = {"image": "i", "broker": {"routing": value}}
        VALIDATOR.validate(gateway(spec))
        assert GatewaySpec.parse(spec).broker.routing == value


def test_peering_crds() -> None:
    docs = list(yaml.safe_load_all((CRDS / "kopf-peering.yaml").read_text()))
    kinds = {(d["spec"]["group"], d["spec"]["names"]["kind"], d["spec"]["scope"]) for d in docs}
    assert kinds == {
        ("kopf.dev", "ClusterKopfPeering", "Cluster"),
        ("kopf.dev", "KopfPeering", "Namespaced"),
    }
