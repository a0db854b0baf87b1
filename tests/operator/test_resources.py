"""The Deployment and Service built from a spec."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from clarion import names
from clarion.config import Settings, default_of, option, options
from clarion_operator import applying, resources
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
    # /metrics is on the internal port, next to /api and /admin; probes stay on http.
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": 8080, "api": 8081}
    assert ann["prometheus.io/port"] == str(ports["api"])
    assert dep["spec"]["replicas"] == 2
    assert c["securityContext"]["runAsNonRoot"] is True


def test_env_from_the_downward_api_and_secrets() -> None:
    env = env_of(build({"image": "i", "auth": {"mode": "jwt", "allowClientPublish": True}}))
    assert env["CLARION_POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["CLARION_AMQP_URL"]["secretKeyRef"] == {
        "name": "clarion-rabbitmq",
        "key": "url",
        "optional": False,
    }
    assert env["CLARION_JWT_SECRET"]["secretKeyRef"]["key"] == "jwtSecret"
    # Fail closed: without the key the pod does not start, rather than serve an open API.
    assert env["CLARION_API_KEYS"]["secretKeyRef"]["optional"] is False
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
@pytest.mark.parametrize("routing", ["fanout", "direct"])
def test_the_pod_environment_is_what_clarion_serve_reads(
    mode: str, publish: bool, routing: str
) -> None:
    """Every variable is a declared gateway setting, and its value parses into that setting."""
    raw = {
        "image": "i",
        "auth": {"mode": mode, "allowClientPublish": publish},
        "broker": {"exchange": "x.fan", "queuePrefix": "x.pod.", "routing": routing},
    }
    env = env_of(build(raw))
    assert set(env) <= {opt.env for opt in options()}
    environ = {k: v if isinstance(v, str) else FROM_SECRETS[k] for k, v in env.items()}
    settings = Settings.from_env(environ)
    settings.validate()
    assert (settings.pod_name, settings.port) == ("gw-7d9f-x2x", resources.CONTAINER_PORT)
    assert settings.api_port == resources.API_PORT
    assert (settings.exchange, settings.queue_prefix) == ("x.fan", "x.pod.")
    assert (settings.auth, settings.allow_client_publish) == (mode, publish)
    assert settings.api_keys == ["k1", "k2"] and settings.admin_token == "t"
    assert settings.exchange == "x.fan"
    assert settings.routing == routing
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
    assert applying.contains(live, wanted)
    assert not applying.contains(live, build({"image": "j"}, replicas=None))


@pytest.mark.parametrize("version", ["1.29"])
def test_manifests_pass_the_kubernetes_schema(version: str) -> None:
    gs = GatewaySpec.parse({"image": "img:1", "service": {"type": "LoadBalancer"}})
    for obj in (
        resources.deployment("gw", "ns", gs, OWNER, 2),
        resources.service("gw", "ns", gs, OWNER),
    ):
        kubernetes_validate.validate(obj, version, strict=True)


def test_each_gateway_gets_its_own_exchange() -> None:
    """Two gateways in one vhost never share an exchange (nor the history behind it)."""
    a = env_of(resources.deployment("a", "ns", GatewaySpec.parse({"image": "i"}), OWNER, 2))
    b = env_of(resources.deployment("b", "ns", GatewaySpec.parse({"image": "i"}), OWNER, 2))
    other_ns = env_of(resources.deployment("a", "ns2", GatewaySpec.parse({"image": "i"}), OWNER, 2))
    exchanges = {e["CLARION_EXCHANGE"] for e in (a, b, other_ns)}
    assert exchanges == {"clarion.gw.ns.a", "clarion.gw.ns.b", "clarion.gw.ns2.a"}
    # Never under the pod queues' prefix, which the sweep deletes (a namespace named "pod").
    pod_ns = env_of(resources.deployment("x", "pod", GatewaySpec.parse({"image": "i"}), OWNER, 2))
    assert not (pod_ns["CLARION_EXCHANGE"] + ".history").startswith(names.QUEUE_PREFIX)
    named = env_of(build({"image": "i", "broker": {"exchange": "shared.fanout"}}))
    assert named["CLARION_EXCHANGE"] == "shared.fanout"


def test_routing_reaches_the_pods() -> None:
    """``broker.routing`` becomes the gateway's ``--routing``; absent, the gateway's default."""
    assert option("routing").env == "CLARION_ROUTING"
    assert env_of(build({"image": "i", "broker": {"routing": "direct"}}))["CLARION_ROUTING"] == (
        "direct"
    )
    assert env_of(build({"image": "i", "broker": {"routing": "fanout"}}))["CLARION_ROUTING"] == (
        "fanout"
    )
    assert env_of(build({"image": "i"}))["CLARION_ROUTING"] == default_of("routing")


@pytest.mark.parametrize("bad", ["topic", "", 1])
def test_a_bad_routing_is_refused_with_the_field_named(bad: object) -> None:
    with pytest.raises(ValueError, match=r"spec\.broker\.routing: must be one of fanout, direct"):
        GatewaySpec.parse({"image": "i", "broker": {"routing": bad}})


def test_public_api_is_explicit() -> None:
    env = env_of(build({"image": "i", "auth": {"publicApi": True}}))
    assert env["CLARION_API_KEYS"]["secretKeyRef"]["optional"] is True


FULL_POD = {
    "image": "i",
    "imagePullSecrets": [{"name": "regcred"}],
    "env": [{"name": "EXTRA", "value": "1"}],
    "nodeSelector": {"pool": "ws"},
    "tolerations": [{"key": "ws", "operator": "Exists", "effect": "NoSchedule"}],
    "affinity": {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["ws"]}]}
                ]
            }
        }
    },
    "topologySpreadConstraints": [
        {"maxSkew": 2, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule"}
    ],
    "priorityClassName": "high",
    "serviceAccountName": "gw-sa",
    "automountServiceAccountToken": True,
    "podAnnotations": {"team": "push"},
    "podLabels": {"team": "push", names.LABEL_GATEWAY: "not-this"},
    "strategy": {"maxSurge": 1, "maxUnavailable": "10%"},
    "probes": {"readiness": {"periodSeconds": 7}, "liveness": {"failureThreshold": 9}},
    "metrics": {"scrapeAnnotations": False},
}


def test_pod_spec_fields_reach_the_pods() -> None:
    dep = build(FULL_POD)
    tpl = dep["spec"]["template"]
    pod = tpl["spec"]
    c = pod["containers"][0]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert c["env"][-1] == {"name": "EXTRA", "value": "1"}
    assert pod["nodeSelector"] == {"pool": "ws"}
    assert pod["tolerations"] == FULL_POD["tolerations"]
    assert pod["affinity"] == FULL_POD["affinity"]
    assert pod["topologySpreadConstraints"] == FULL_POD["topologySpreadConstraints"]
    assert pod["priorityClassName"] == "high"
    assert pod["serviceAccountName"] == "gw-sa"
    assert pod["automountServiceAccountToken"] is True
    # The gateway's own labels win: the selector must keep matching.
    assert tpl["metadata"]["labels"] == {"team": "push", **names.gateway_labels("gw")}
    assert tpl["metadata"]["annotations"] == {"team": "push"}  # no scrape annotations
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": "10%"}
    assert c["readinessProbe"]["periodSeconds"] == 7
    assert c["readinessProbe"]["timeoutSeconds"] == 3  # the rest keep their defaults
    assert c["livenessProbe"]["failureThreshold"] == 9
    kubernetes_validate.validate(dep, "1.29", strict=True)


def test_pod_defaults_spread_and_no_token() -> None:
    dep = build({"image": "i"})
    pod = dep["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert "serviceAccountName" not in pod and "imagePullSecrets" not in pod
    spread = pod["topologySpreadConstraints"]
    assert {s["topologyKey"] for s in spread} == {
        "kubernetes.io/hostname",
        "topology.kubernetes.io/zone",
    }
    for s in spread:
        assert s["maxSkew"] == 1 and s["whenUnsatisfiable"] == "ScheduleAnyway"
        assert s["labelSelector"] == {"matchLabels": names.gateway_labels("gw")}
    assert (
        build({"image": "i", "topologySpreadConstraints": []})["spec"]["template"]["spec"][
            "topologySpreadConstraints"
        ]
        == []
    )
    c = pod["containers"][0]
    # One slow answer in a connect storm must not drop or restart a pod.
    for probe, period, timeout, failures in (
        ("readinessProbe", 5, 3, 3),
        ("livenessProbe", 10, 5, 6),
    ):
        assert (
            c[probe]["periodSeconds"],
            c[probe]["timeoutSeconds"],
            c[probe]["failureThreshold"],
        ) == (period, timeout, failures)
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": "25%", "maxUnavailable": 0}


def test_service_annotations_and_source_ranges() -> None:
    raw = {
        "image": "i",
        "service": {
            "type": "LoadBalancer",
            "annotations": {"service.beta.kubernetes.io/aws-load-balancer-type": "nlb"},
            "loadBalancerSourceRanges": ["10.0.0.0/8"],
        },
    }
    svc = resources.service("gw", "ns", GatewaySpec.parse(raw), OWNER)
    assert svc["metadata"]["annotations"] == raw["service"]["annotations"]
    assert svc["spec"]["loadBalancerSourceRanges"] == ["10.0.0.0/8"]
    api = resources.api_service("gw", "ns", GatewaySpec.parse(raw), OWNER)
    assert api["metadata"]["name"] == "gw-api" and api["spec"]["type"] == "ClusterIP"
    assert "annotations" not in api["metadata"]
    kubernetes_validate.validate(svc, "1.29", strict=True)
    kubernetes_validate.validate(api, "1.29", strict=True)


def _live(spec: dict[str, Any]) -> dict[str, Any]:
    """What the server holds after the operator wrote ``spec``'s Deployment (plus defaults)."""
    live = applying.recorded(build(spec, replicas=3))
    live["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = "IfNotPresent"
    live["status"] = {"readyReplicas": 3}
    return live


def test_plan_is_empty_when_nothing_changed() -> None:
    assert applying.plan(_live({"image": "i"}), build({"image": "i"}, replicas=None)) is None


def test_plan_removes_what_the_spec_no_longer_sets() -> None:
    """A removed CPU limit, node selector or pod annotation is removed from the Deployment."""
    before = {
        "image": "i",
        "resources": {"limits": {"cpu": "1", "memory": "512Mi"}},
        "nodeSelector": {"pool": "ws"},
        "podAnnotations": {"team": "push"},
    }
    after = {"image": "i", "resources": {"limits": {"memory": "512Mi"}}}
    live = _live(before)
    wanted = build(after, replicas=None)
    assert applying.contains(live, wanted)  # what made the removal invisible before
    patch = applying.plan(live, wanted)
    assert patch is not None
    pod = patch["spec"]["template"]["spec"]
    assert pod["nodeSelector"] is None
    assert pod["containers"][0]["resources"] == {"limits": {"memory": "512Mi"}}  # list: replaced
    assert patch["spec"]["template"]["metadata"]["annotations"]["team"] is None
    assert "replicas" not in patch["spec"]  # the autoscaler's


def test_plan_restores_a_hand_edit() -> None:
    live = _live({"image": "i"})
    live["spec"]["template"]["spec"]["containers"][0]["image"] = "hand:edit"
    patch = applying.plan(live, build({"image": "i"}, replicas=None))
    assert patch is not None
    assert patch["spec"]["template"]["spec"]["containers"][0]["image"] == "i"
