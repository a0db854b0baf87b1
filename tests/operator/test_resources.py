"""The Deployment and Service built from a spec."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from clarion import names
from clarion.config import Settings, options
from clarion_operator import resources
from clarion_operator.spec import GatewaySpec

OWNER = {"metadata": {"name": "gw", "namespace": "ns", "uid": "u-1"}}


def build(spec: dict[str, Any], replicas: int | None = 2) -> dict[str, Any]:
    return resources.deployment("gw", "ns", GatewaySpec.parse(spec), OWNER, replicas)


def env_of(dep: dict[str, Any]) -> dict[str, Any]:
    container = dep["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_deployment_shape() -> None:
    dep = build({"image": "img:1"})
    labels = names.gateway_labels("gw")
    assert dep["metadata"]["labels"] == labels
    assert dep["spec"]["selector"]["matchLabels"] == labels
    assert dep["spec"]["template"]["metadata"]["labels"] == labels
    assert dep["metadata"]["ownerReferences"][0] == {
        "apiVersion": "clarion.dev/v1alpha1",
        "kind": "WebSocketGateway",
        "name": "gw",
        "uid": "u-1",
        "controller": True,
        "blockOwnerDeletion": True,
    }
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["image"] == "img:1"
    assert c["ports"][0]["name"] == names.HTTP_PORT_NAME
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] > (
        resources.PRESTOP_SLEEP + resources.DRAIN_DELAY + resources.DRAIN_WINDOW
    )
    ann = dep["spec"]["template"]["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true"
    assert ann["prometheus.io/port"] == str(c["ports"][0]["containerPort"])
    assert dep["spec"]["replicas"] == 2
    assert c["securityContext"]["runAsNonRoot"] is True


def test_env_from_the_downward_api_and_secrets() -> None:
    env = env_of(build({"image": "i", "auth": {"mode": "jwt", "allowClientPublish": True}}))
    assert env["CLARION_POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["CLARION_AMQP_URL"]["secretKeyRef"] == {
        "name": "rabbitmq",
        "key": "url",
        "optional": False,
    }
    assert env["CLARION_JWT_SECRET"]["secretKeyRef"]["key"] == "jwtSecret"
    assert env["CLARION_API_KEYS"]["secretKeyRef"]["optional"] is True
    assert env["CLARION_ADMIN_TOKEN"]["secretKeyRef"]["key"] == "adminToken"
    assert env["CLARION_AUTH"] == "jwt"
    assert env["CLARION_ALLOW_CLIENT_PUBLISH"] == "true"
    assert "CLARION_JWT_SECRET" not in env_of(build({"image": "i", "auth": {"mode": "none"}}))


#: What the referenced Secrets and the downward API would put in the variables.
FROM_SECRETS = {
    "CLARION_POD_NAME": "gw-7d9f-x2x",
    "CLARION_AMQP_URL": "amqp://u:p@rabbitmq:5672/clarion",
    "CLARION_JWT_SECRET": "s",
    "CLARION_API_KEYS": "k1,k2",
    "CLARION_ADMIN_TOKEN": "t",
}


@pytest.mark.parametrize("mode", ["jwt", "none"])
@pytest.mark.parametrize("publish", [True, False])
def test_the_pod_environment_is_what_clarion_serve_reads(mode: str, publish: bool) -> None:
    """Every variable is a declared gateway setting, and its value parses into that setting."""
    raw = {
        "image": "i",
        "auth": {"mode": mode, "allowClientPublish": publish},
        "broker": {"exchange": "x.fan", "queuePrefix": "x.pod."},
    }
    env = env_of(build(raw))
    assert set(env) <= {opt.env for opt in options()}
    environ = {k: v if isinstance(v, str) else FROM_SECRETS[k] for k, v in env.items()}
    settings = Settings.from_env(environ)
    settings.validate()
    assert (settings.pod_name, settings.port) == ("gw-7d9f-x2x", resources.CONTAINER_PORT)
    assert (settings.exchange, settings.queue_prefix) == ("x.fan", "x.pod.")
    assert (settings.auth, settings.allow_client_publish) == (mode, publish)
    assert settings.api_keys == ["k1", "k2"] and settings.admin_token == "t"
    assert (settings.drain_delay, settings.drain_window) == (
        resources.DRAIN_DELAY,
        resources.DRAIN_WINDOW,
    )


def test_service() -> None:
    svc = resources.service("gw", "ns", GatewaySpec.parse({"image": "i"}), OWNER)
    assert svc["spec"]["selector"] == names.gateway_labels("gw")
    assert svc["spec"]["ports"][0]["targetPort"] == names.HTTP_PORT_NAME
    assert svc["spec"]["ports"][0]["port"] == 80
    assert svc["spec"]["type"] == "ClusterIP"


def test_replicas_belong_to_the_autoscaler() -> None:
    gs = GatewaySpec.parse({"image": "i", "replicas": {"min": 2, "max": 5}})
    assert resources.replicas_on_apply(None, gs) == 2
    assert resources.replicas_on_apply({"spec": {"replicas": 4}}, gs) is None
    assert resources.replicas_on_apply({"spec": {"replicas": 9}}, gs) == 5
    assert resources.replicas_on_apply({"spec": {"replicas": 1}}, gs) == 2


def test_contains_ignores_server_defaults_but_not_changes() -> None:
    wanted = build({"image": "i"}, replicas=None)
    live = build({"image": "i"}, replicas=3)
    live["status"] = {"readyReplicas": 3}
    live["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = "IfNotPresent"
    assert resources.contains(live, wanted)
    assert not resources.contains(live, build({"image": "j"}, replicas=None))


@pytest.mark.parametrize("version", ["1.29"])
def test_manifests_pass_the_kubernetes_schema(version: str) -> None:
    gs = GatewaySpec.parse({"image": "img:1", "service": {"type": "LoadBalancer"}})
    for obj in (
        resources.deployment("gw", "ns", gs, OWNER, 2),
        resources.service("gw", "ns", gs, OWNER),
    ):
        kubernetes_validate.validate(obj, version, strict=True)
