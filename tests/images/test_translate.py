"""The Deployment-to-podman translation: what it maps, and that it refuses what it cannot."""

from __future__ import annotations

import copy
import itertools
from typing import Any

import pytest

from clarion_operator import resources
from clarion_operator.spec import GatewaySpec

from .podman import Untranslatable, translate

pytestmark = [pytest.mark.images, pytest.mark.timeout(10)]

OWNER = {"metadata": {"name": "gw", "namespace": "ns", "uid": "u-1"}}
SECRETS = {
    ("clarion-rabbitmq", "url"): "amqp://guest:s3cret-url@127.0.0.1:5672/v",
    ("clarion-auth", "jwtSecret"): "s3cret-jwt",
    ("clarion-auth", "apiKeys"): "s3cret-key",
}


def deployment() -> dict[str, Any]:
    # A deep copy: the spec's default resources are shared dicts the tests must not change.
    spec = GatewaySpec.parse({"image": "img:1"})
    return copy.deepcopy(resources.deployment("gw", "ns", spec, OWNER, 2))


def container(dep: dict[str, Any]) -> dict[str, Any]:
    c: dict[str, Any] = dep["spec"]["template"]["spec"]["containers"][0]
    return c


def run_of(dep: dict[str, Any], **kw: Any) -> Any:
    args = {
        "pod_name": "gw-0",
        "port": 18080,
        "api_port": 18081,
        "secrets": SECRETS,
        "image_user": "10001:10001",
    }
    return translate(dep, **{**args, **kw})


def pairs(args: list[str]) -> list[tuple[str, str]]:
    return list(itertools.pairwise(args))


def test_the_operators_settings_become_podman_options() -> None:
    run = run_of(deployment())
    a = run.args
    assert "--read-only" in a and "--read-only-tmpfs=false" in a
    assert ("--tmpfs", "/tmp:rw,mode=1777,size=64m") in pairs(a)
    assert ("--cap-drop", "ALL") in pairs(a)
    assert ("--security-opt", "no-new-privileges") in pairs(a)
    assert ("--memory", "512m") in pairs(a)
    assert ("--network", "host") in pairs(a)
    assert ("--entrypoint", '["clarion", "serve"]') in pairs(a)
    env = [v for k, v in pairs(a) if k == "-e"]
    assert "CLARION_POD_NAME=gw-0" in env
    # Only the address and port differ from what the operator writes.
    assert "CLARION_PORT=18080" in env and "CLARION_HOST=127.0.0.1" in env
    assert "CLARION_DRAIN_WINDOW=" + str(resources.DRAIN_WINDOW) in env
    # Secrets are passed by name from podman's environment, never on its command line.
    assert set(run.env) == {"CLARION_AMQP_URL", "CLARION_JWT_SECRET", "CLARION_API_KEYS"}
    assert not any("s3cret" in arg for arg in run.run_command())
    # The optional admin token's Secret is absent: the variable is left out, as in a pod.
    assert "CLARION_ADMIN_TOKEN" not in run.env and "CLARION_ADMIN_TOKEN" not in env
    assert (run.ready_path, run.live_path) == ("/readyz", "/healthz")
    assert run.grace_seconds == resources.TERMINATION_GRACE
    assert run.pre_stop == ["sleep", str(resources.PRESTOP_SLEEP)]


def _set(path: str, value: Any) -> dict[str, Any]:
    """A Deployment with ``value`` put at ``path`` (dots; a number indexes a list)."""
    dep = deployment()
    *parents, last = path.split(".")
    node: Any = dep["spec"]["template"]["spec"]
    for key in parents:
        node = node[int(key)] if key.isdigit() else node.setdefault(key, {})
    node[int(last) if last.isdigit() else last] = value
    return dep


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("serviceAccountName", "gw"),  # pod level
        ("hostNetwork", True),
        ("securityContext.fsGroup", 10001),
        ("containers.0.imagePullPolicy", "Always"),  # container level
        ("containers.0.startupProbe", {"httpGet": {"path": "/healthz", "port": "http"}}),
        ("containers.0.envFrom", [{"secretRef": {"name": "x"}}]),
        ("containers.0.securityContext.privileged", False),
        ("containers.0.securityContext.seccompProfile", {"type": "Localhost"}),
        ("containers.0.resources.limits.ephemeral-storage", "1Gi"),
        ("containers.0.ports.0.protocol", "UDP"),
        ("containers.0.env.0.valueFrom", {"fieldRef": {"fieldPath": "status.podIP"}}),
        ("containers.0.env.0.valueFrom", {"configMapKeyRef": {"name": "c", "key": "k"}}),
        ("containers.0.readinessProbe", {"exec": {"command": ["true"]}}),
        ("containers.0.lifecycle.postStart", {"exec": {"command": ["true"]}}),
        ("containers.0.volumeMounts.0.readOnly", True),
        ("volumes.0", {"name": "tmp", "configMap": {"name": "c"}}),
    ],
)
def test_a_setting_without_a_translation_fails(path: str, value: Any) -> None:
    with pytest.raises(Untranslatable):
        run_of(_set(path, value))


def test_scheduling_only_fields_are_accepted() -> None:
    dep = _set("nodeSelector", {"kubernetes.io/os": "linux"})
    dep["spec"]["template"]["spec"]["tolerations"] = [{"operator": "Exists"}]
    assert run_of(dep).args == run_of(deployment()).args


def test_what_the_kubelet_would_refuse_is_refused() -> None:
    secrets = {k: v for k, v in SECRETS.items() if k != ("clarion-rabbitmq", "url")}
    with pytest.raises(AssertionError, match="clarion-rabbitmq/url not provided"):
        run_of(deployment(), secrets=secrets)
    for user in ("0:0", "root", "clarion", ""):
        with pytest.raises(AssertionError, match="runAsNonRoot"):
            run_of(deployment(), image_user=user)
    dep = deployment()
    container(dep)["securityContext"]["runAsUser"] = 10002
    assert ("--user", "10002") in pairs(run_of(dep, image_user="0:0").args)


def test_overrides_only_replace_what_the_deployment_sets() -> None:
    run = run_of(deployment(), env_overrides={"CLARION_DRAIN_DELAY": "1"})
    assert "CLARION_DRAIN_DELAY=1" in run.args
    with pytest.raises(AssertionError, match="does not set"):
        run_of(deployment(), env_overrides={"CLARION_MAX_CONNECTIONS": "5"})
