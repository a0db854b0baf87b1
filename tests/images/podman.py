"""Run a pod's container with podman exactly as the Deployment says (``translate``).

The operator's Deployment is the contract: ``translate`` turns its pod template into
``podman run`` arguments and refuses any setting it does not know, so a setting the
operator starts writing cannot be skipped here without someone deciding how it maps.
Only the listen address and port are changed: with ``--network host`` every container
shares the host's ports, so two pods cannot both listen on the containerPort.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: Pod-spec fields that only place a pod on a node: nothing to run differently here.
SCHEDULING_ONLY = {
    "affinity",
    "nodeSelector",
    "priorityClassName",
    "schedulerName",
    "tolerations",
    "topologySpreadConstraints",
}
#: The label every container started by the tests carries, so a crashed run can be cleaned.
LABEL = "clarion-test=images"


class Untranslatable(AssertionError):
    """The Deployment carries a setting that has no podman translation yet: add one."""


def _take(obj: Mapping[str, Any], known: set[str], where: str) -> dict[str, Any]:
    unknown = set(obj) - known
    if unknown:
        raise Untranslatable(f"{where}: no podman translation for {sorted(unknown)}")
    return dict(obj)


def _quantity(value: str | int, where: str) -> str:
    """A Kubernetes memory quantity as podman's ``--memory``/``size=`` value."""
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi)?", str(value))
    if not m:
        raise Untranslatable(f"{where}: quantity {value!r}")
    return m.group(1) + {"Ki": "k", "Mi": "m", "Gi": "g", None: ""}[m.group(2)]


def _cpus(value: str | int | float) -> str:
    text = str(value)
    return str(int(text[:-1]) / 1000) if text.endswith("m") else text


@dataclass
class PodRun:
    """What ``podman run`` needs for one pod, and what the kubelet would do around it."""

    name: str
    image: str
    args: list[str]  # podman run options (no secret values: those go through ``env``)
    env: dict[str, str]  # secret values, passed by name (``-e NAME``) from podman's env
    port: int
    #: The internal port (``/api``, ``/admin``, ``/metrics``) when the Deployment has one.
    api_port: int | None
    ready_path: str
    live_path: str
    grace_seconds: float
    pre_stop: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)

    def run_command(self) -> list[str]:
        return ["podman", "run", "-d", "--name", self.name, *self.args, self.image, *self.cmd]


def translate(
    deployment: Mapping[str, Any],
    *,
    pod_name: str,
    port: int,
    secrets: Mapping[tuple[str, str], str],
    api_port: int | None = None,
    host: str = "127.0.0.1",
    env_overrides: Mapping[str, str] | None = None,
    image_user: str = "",
) -> PodRun:
    """``podman run`` options for the Deployment's single container, as pod ``pod_name``.

    ``secrets`` maps (Secret name, key) to the value the test provides. ``env_overrides``
    may only replace variables the Deployment sets (never add one). ``image_user`` is the
    image's USER, checked against ``runAsNonRoot`` as the kubelet does.
    """
    template = deployment["spec"]["template"]
    pod = _take(
        template["spec"],
        {
            "containers",
            "volumes",
            "terminationGracePeriodSeconds",
            "securityContext",
            "automountServiceAccountToken",
        }
        | SCHEDULING_ONLY,
        "pod spec",
    )
    if pod.pop("automountServiceAccountToken", False) is not False:
        raise Untranslatable("automountServiceAccountToken (podman mounts no token)")
    (container,) = pod["containers"]
    c = _take(
        container,
        {
            "name",
            "image",
            "command",
            "args",
            "ports",
            "env",
            "readinessProbe",
            "livenessProbe",
            "lifecycle",
            "resources",
            "securityContext",
            "volumeMounts",
        },
        "container",
    )
    args = ["--network", "host", "--label", LABEL, "--label", f"pod={pod_name}"]

    # -- security ------------------------------------------------------------
    sc = {
        **_take(
            pod.get("securityContext", {}),
            {"runAsNonRoot", "runAsUser", "runAsGroup", "seccompProfile"},
            "pod securityContext",
        ),
        **_take(
            c.get("securityContext", {}),
            {
                "runAsNonRoot",
                "runAsUser",
                "runAsGroup",
                "readOnlyRootFilesystem",
                "allowPrivilegeEscalation",
                "capabilities",
                "seccompProfile",
            },
            "container securityContext",
        ),
    }
    user = str(sc["runAsUser"]) if "runAsUser" in sc else image_user.split(":")[0]
    if "runAsUser" in sc or "runAsGroup" in sc:
        group = f":{sc['runAsGroup']}" if "runAsGroup" in sc else ""
        args += ["--user", f"{user}{group}"]
    if sc.get("runAsNonRoot") and not (user.isdigit() and int(user) != 0):
        # The kubelet refuses to start it (CreateContainerConfigError).
        raise AssertionError(f"runAsNonRoot, but the container would run as user {user!r}")
    if sc.get("readOnlyRootFilesystem"):
        # Only the volumes are writable, as in a pod: no podman tmpfs on /run, /var/tmp.
        args += ["--read-only", "--read-only-tmpfs=false"]
    if sc.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    caps = _take(sc.get("capabilities", {}), {"drop", "add"}, "capabilities")
    for cap in caps.get("drop", []):
        args += ["--cap-drop", cap]
    for cap in caps.get("add", []):
        args += ["--cap-add", cap]
    seccomp = sc.get("seccompProfile", {"type": "RuntimeDefault"})
    if seccomp != {"type": "RuntimeDefault"}:  # podman's default profile is the runtime's
        raise Untranslatable(f"seccompProfile {seccomp}")

    # -- volumes: emptyDir only, as a tmpfs of the same size ------------------
    volumes = {}
    for v in pod.get("volumes", []):
        v = _take(v, {"name", "emptyDir"}, f"volume {v.get('name')}")
        empty = _take(v["emptyDir"], {"sizeLimit", "medium"}, "emptyDir")
        size = f",size={_quantity(empty['sizeLimit'], 'sizeLimit')}" if "sizeLimit" in empty else ""
        volumes[v["name"]] = f"rw,mode=1777{size}"
    for m in c.get("volumeMounts", []):
        m = _take(m, {"name", "mountPath"}, "volumeMount")
        args += ["--tmpfs", f"{m['mountPath']}:{volumes[m['name']]}"]

    # -- resources: limits are enforced; requests only place the pod ----------
    res = _take(c.get("resources", {}), {"requests", "limits"}, "resources")
    limits = _take(res.get("limits", {}), {"memory", "cpu"}, "limits")
    _take(res.get("requests", {}), {"memory", "cpu"}, "requests")
    if "memory" in limits:
        args += ["--memory", _quantity(limits["memory"], "limits.memory")]
    if "cpu" in limits:
        args += ["--cpus", _cpus(limits["cpu"])]

    # -- ports: http, and the internal api one; host networking makes them the host's
    ports = {}
    for p in c.get("ports", []):
        p = _take(p, {"name", "containerPort", "protocol"}, "port")
        if p.get("protocol", "TCP") != "TCP":
            raise Untranslatable(f"port protocol {p['protocol']}")
        ports[p.get("name")] = p
    if set(ports) - {"http", "api"} or "http" not in ports:
        raise Untranslatable(f"ports {sorted(map(str, ports))}")
    p = ports["http"]
    container_port = str(p["containerPort"])

    # -- environment -----------------------------------------------------------
    env: dict[str, str] = {}
    plain: dict[str, str] = {}
    for e in c.get("env", []):
        e = _take(e, {"name", "value", "valueFrom"}, f"env {e.get('name')}")
        name = e["name"]
        if "value" in e:
            plain[name] = str(e["value"])
            continue
        source = _take(e["valueFrom"], {"fieldRef", "secretKeyRef"}, f"env {name}")
        if "fieldRef" in source:
            path = source["fieldRef"]["fieldPath"]
            if path != "metadata.name":
                raise Untranslatable(f"env {name}: fieldRef {path}")
            plain[name] = pod_name
            continue
        ref = _take(source["secretKeyRef"], {"name", "key", "optional"}, f"env {name}")
        value = secrets.get((ref["name"], ref["key"]))
        if value is None:
            if ref.get("optional"):
                continue
            raise AssertionError(f"env {name}: Secret {ref['name']}/{ref['key']} not provided")
        env[name] = value
    # Host networking: the pod's own address and port would collide; this is the only
    # change to what the operator writes (besides ``env_overrides`` a test names).
    if plain.get("CLARION_PORT") != container_port:
        raise AssertionError(f"CLARION_PORT {plain.get('CLARION_PORT')} != {container_port}")
    plain["CLARION_PORT"] = str(port)
    plain["CLARION_HOST"] = host
    if "api" in ports:
        if plain.get("CLARION_API_PORT") != str(ports["api"]["containerPort"]):
            raise AssertionError("CLARION_API_PORT is not the container port named api")
        if api_port is None:
            raise AssertionError("the Deployment has an api port: give translate an api_port")
        plain["CLARION_API_PORT"] = str(api_port)
    for name, value in (env_overrides or {}).items():
        if name not in plain:
            raise AssertionError(f"override of {name}, which the Deployment does not set")
        plain[name] = value
    for name, value in plain.items():
        args += ["-e", f"{name}={value}"]
    for name in env:
        args += ["-e", name]  # the value comes from podman's environment: not on argv

    # -- command, probes, lifecycle -------------------------------------------
    if "command" in c:
        args += ["--entrypoint", json.dumps(c["command"])]

    def probe_path(key: str) -> str:
        probe = _take(
            c[key],
            {"httpGet", "periodSeconds", "failureThreshold", "timeoutSeconds"},
            key,
        )
        get = _take(probe["httpGet"], {"path", "port"}, f"{key}.httpGet")
        if get["port"] not in (p.get("name"), p["containerPort"]):
            raise Untranslatable(f"{key} on port {get['port']}")
        return str(get["path"])

    lifecycle = _take(c.get("lifecycle", {}), {"preStop"}, "lifecycle")
    pre_stop = []
    if "preStop" in lifecycle:
        hook = _take(lifecycle["preStop"], {"exec"}, "preStop")
        pre_stop = list(hook["exec"]["command"])
    return PodRun(
        name=pod_name,
        image=c["image"],
        args=args,
        env=env,
        port=port,
        api_port=api_port if "api" in ports else None,
        ready_path=probe_path("readinessProbe"),
        live_path=probe_path("livenessProbe"),
        grace_seconds=float(pod.get("terminationGracePeriodSeconds", 30)),
        pre_stop=pre_stop,
        cmd=list(c.get("args", [])),
    )


def podman(*args: str, timeout: float = 60, env: Mapping[str, str] | None = None) -> str:
    """Run podman; its stdout, or an AssertionError with its stderr."""
    r = subprocess.run(
        ["podman", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    if r.returncode != 0:
        raise AssertionError(f"podman {args[0]} failed ({r.returncode}): {r.stderr.strip()}")
    return r.stdout.strip()


@dataclass(frozen=True)
class Stopped:
    sigterm_at: float  # monotonic
    exited_after: float  # seconds from SIGTERM
    exit_code: int
    grace_left: int  # seconds between SIGTERM and SIGKILL


class Containers:
    """The containers of one test; ``remove_all`` (a fixture finalizer) removes them."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def run(self, run: PodRun) -> str:
        self.names.append(run.name)
        podman(*run.run_command()[1:], env=run.env)
        return run.name

    def state(self, name: str) -> dict[str, Any]:
        state: dict[str, Any] = json.loads(podman("inspect", "--format", "{{json .State}}", name))
        return state

    def logs(self, name: str) -> str:
        r = subprocess.run(["podman", "logs", name], capture_output=True, text=True, timeout=30)
        return (r.stdout + r.stderr)[-4000:]

    def stop(self, run: PodRun) -> Stopped:
        """What the kubelet does on a pod's deletion: the preStop hook, then SIGTERM and, at
        the end of the grace period (which the hook's time counts in), SIGKILL."""
        started = time.monotonic()
        if run.pre_stop:
            podman("exec", run.name, *run.pre_stop, timeout=run.grace_seconds)
        left = int(run.grace_seconds - (time.monotonic() - started))
        sigterm = time.monotonic()
        podman("stop", "--time", str(max(1, left)), run.name, timeout=left + 30)
        exited = time.monotonic() - sigterm
        return Stopped(sigterm, exited, int(self.state(run.name)["ExitCode"]), left)

    def remove_all(self) -> None:
        for name in self.names:
            subprocess.run(["podman", "rm", "-f", "-t", "0", name], capture_output=True, timeout=60)
