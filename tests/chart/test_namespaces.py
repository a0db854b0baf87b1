"""Channel namespaces from the chart's values to the pod's ``--namespaces``: values.yaml
``gateway.namespaces`` -> the WebSocketGateway's ``spec.namespaces`` (the CRD's schema) ->
the operator's ``CLARION_NAMESPACES`` -> what ``clarion serve`` reads. A typo stops at each
step, naming the field (issue 21, item 4)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from clarion import names
from clarion.config import Settings, option
from clarion.namespaces import Namespace
from clarion_operator import resources
from clarion_operator.spec import GatewaySpec

from .helpers import CRD_FILE, closed_schema, crd_schema, helm_template_cmd, one, render, run

NAMESPACES = {
    "live": {"history": False, "rate": 5},
    "doc": {"subscribe": "token", "publish": True},
    "": {"history_seconds": 600},
}
OWNER = {"metadata": {"name": "gw", "namespace": "ns", "uid": "u-1"}}


def values_file(tmp_path: Path, namespaces: Any) -> Path:
    path = tmp_path / "values.json"
    path.write_text(json.dumps({"gateway": {"namespaces": namespaces}}))
    return path


def env_of(spec: dict[str, Any]) -> dict[str, str]:
    dep = resources.deployment("gw", "ns", GatewaySpec.parse(spec), OWNER, 2)
    container = dep["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value") for e in container["env"]}


def test_values_reach_the_pods_environment(tmp_path: Path) -> None:
    gw = one(render(values=[values_file(tmp_path, NAMESPACES)]), "WebSocketGateway")
    assert gw["spec"]["namespaces"] == NAMESPACES
    schema = closed_schema(crd_schema(CRD_FILE, names.CRD_KIND))
    jsonschema.Draft4Validator(schema).validate(json.loads(json.dumps(gw)))
    env = env_of(gw["spec"])
    settings = Settings.from_env({option("namespaces").env: env[option("namespaces").env]})
    settings.auth = "jwt"
    settings.jwt_secret, settings.public_api = "s" * 32, True
    settings.validate()
    from clarion.namespaces import Namespaces

    parsed = Namespaces.of_setting(settings.namespaces)
    assert parsed.of("live:x") == Namespace(name="live", history=False, rate=5.0)
    assert parsed.of("news").history_seconds == 600.0


def test_no_namespaces_by_default() -> None:
    gw = one(render(), "WebSocketGateway")
    assert "namespaces" not in gw["spec"]
    assert option("namespaces").env not in env_of(gw["spec"])


@pytest.mark.parametrize(
    "namespaces,error",
    [
        ({"live": {"histroy": False}}, "Additional property histroy is not allowed"),
        ({"live": {"history": "no"}}, "Invalid type"),
        ({"live": {"rate": -1}}, "Must be greater than or equal to 0"),
        ({"live": {"subscribe": "anyone"}}, "gateway.namespaces.live.subscribe"),
        ({"live": 5}, "Invalid type"),
    ],
)
def test_the_values_schema_refuses_a_bad_namespace(
    tmp_path: Path, namespaces: Any, error: str
) -> None:
    proc = run(helm_template_cmd(values=[values_file(tmp_path, namespaces)]), check=False)
    assert proc.returncode != 0, f"{namespaces} was accepted"
    assert error in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    "namespaces",
    [
        {"live": {"history": "no"}},
        {"live": {"histroy": False}},
        {"live": {"history_seconds": -1}},
        {"live": {"subscribe": "anyone"}},
        {"live": []},
    ],
)
def test_the_crd_refuses_a_bad_namespace(namespaces: Any) -> None:
    schema = closed_schema(crd_schema(CRD_FILE, names.CRD_KIND))
    gw = {
        "apiVersion": f"{names.CRD_GROUP}/{names.CRD_VERSION}",
        "kind": names.CRD_KIND,
        "metadata": {"name": "gw"},
        "spec": {"image": "i", "namespaces": namespaces},
    }
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft4Validator(schema).validate(gw)


@pytest.mark.parametrize(
    "namespaces,error",
    [
        ({"live": {"history": "no"}}, "spec.namespaces: namespace 'live': option 'history'"),
        ({"a:b": {}}, "spec.namespaces: namespace 'a:b'"),
        ("live", "spec.namespaces: must be an object"),
        ({"doc": {"rate": "fast"}}, "spec.namespaces: namespace 'doc': option 'rate'"),
    ],
)
def test_the_operator_refuses_a_bad_namespace_naming_the_field(namespaces: Any, error: str) -> None:
    with pytest.raises(ValueError, match=error.replace("'", ".")):
        GatewaySpec.parse({"image": "i", "namespaces": namespaces})
