"""End-to-end harness: KMock as the API server, real RabbitMQ, real gateway processes as pods.

``Emulator`` closes KMock's known gaps (docs/operator.md, Tests): resource versions bumped on
every write with a 422 for a failed JSON-patch ``test``, ``metadata.generation`` bumped on a
spec change, ``generateName``,
label and field selectors, an isolated ``/status`` subresource, watches that
start after the listing's resource version, and PUT as a replace. KMock has no
controllers: tests create and delete pod objects themselves, each one pointing
at a real ``clarion serve`` process on 127.0.0.x.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import secrets
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import jsonpatch
import jsonpointer
import kmock
import pytest

from clarion import names
from tests.support import MGMT_URL, GatewayProcess, PodFactory, Vhost, free_port, wait_for

NS = "clarion-test"
GATEWAY_RESOURCE = f"{names.CRD_GROUP}/{names.CRD_VERSION}/{names.CRD_PLURAL}"
TIMINGS: list[tuple[str, float]] = []
#: (apiGroup, resource[/subresource], verb) the operator used, across the run.
OBSERVED: set[tuple[str, str, str]] = set()

_versions = itertools.count(1000)


def _selected(obj: dict[str, Any], params: Any) -> bool:
    """Equality label selectors (k=v, k!=v, k, !k) and name/namespace field selectors."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for term in filter(None, (params.get("labelSelector") or "").split(",")):
        if "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k) == v:
                return False
        elif "=" in term:
            k, v = term.replace("==", "=").split("=", 1)
            if labels.get(k) != v:
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    meta = obj.get("metadata") or {}
    for term in filter(None, (params.get("fieldSelector") or "").split(",")):
        k, _, v = term.replace("==", "=").partition("=")
        field = {"metadata.name": meta.get("name"), "metadata.namespace": meta.get("namespace")}
        if k in field and field[k] != v:
            return False
    return True


class Emulator(kmock.KubernetesEmulator):
    """KMock with the behaviour kopf and our operator rely on from a real API server."""

    def _has_status(self, request: kmock.Request) -> bool:
        res = request.resource
        return (
            res is not None
            and res in self.resources
            and "status" in (self.resources[res].subresources or set())
        )

    async def _handle(self, request: kmock.Request) -> Any:
        if request.resource is not None and request.method == kmock.method.PUT and request.name:
            # A replace: drop what is there, keep the metadata we own.
            key = (request.resource, request.namespace, request.name)
            if key not in set(self.objects.keys()) or self.objects[key].deleted:
                raise kmock.KubernetesObjectNotFoundError()
            current = self.objects[key].raw
            request.data.setdefault("metadata", {})["resourceVersion"] = str(next(_versions))
            self.objects[key].patch({k: None for k in current if k not in request.data})
            self.objects[key].patch(request.data)
            return await self._serve_fetch(request)
        if request.resource is not None and request.action == kmock.action.CREATE:
            self._on_create(request)
        elif request.resource is not None and request.action == kmock.action.UPDATE:
            self._on_patch(request)
        return await super()._handle(request)

    def _on_create(self, request: kmock.Request) -> None:
        data = request.data
        meta = data.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + secrets.token_hex(3)
        if request.namespace and not meta.get("namespace"):
            meta["namespace"] = request.namespace
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        meta["resourceVersion"] = str(next(_versions))
        meta.setdefault("generation", 1)

    def _on_patch(self, request: kmock.Request) -> None:
        key = (request.resource, request.namespace, request.name)
        if key not in set(self.objects.keys()) or self.objects[key].deleted:
            return  # KMock answers 404 itself
        current = self.objects[key].raw
        version = str(next(_versions))
        status_only = request.subresource == "status"
        isolate = self._has_status(request)
        data = request.data
        if isinstance(data, list):  # JSON patch
            for op in data:
                if op.get("op") == "test":
                    try:
                        ok = jsonpointer.resolve_pointer(current, op["path"]) == op.get("value")
                    except jsonpointer.JsonPointerException:
                        ok = False
                    if not ok:
                        raise kmock.KubernetesError(
                            status=422, reason="Invalid", message="the test operation failed"
                        )
            if isolate:
                keep = [
                    op
                    for op in data
                    if op.get("op") == "test"
                    or op.get("path", "").startswith("/status") == status_only
                ]
                data[:] = keep
            data.append({"op": "add", "path": "/metadata/resourceVersion", "value": version})
            if not status_only and any(op.get("path", "").startswith("/spec") for op in data):
                generation = int((current.get("metadata") or {}).get("generation") or 1) + 1
                data.append({"op": "add", "path": "/metadata/generation", "value": generation})
            jsonpatch.JsonPatch(data).apply(current)  # raise here rather than inside KMock
        elif isinstance(data, dict):  # merge patch
            if isolate:
                for k in [k for k in data if (k == "status") != status_only and k != "metadata"]:
                    del data[k]
            data.setdefault("metadata", {})
            if isinstance(data["metadata"], dict):
                data["metadata"]["resourceVersion"] = version
                if not status_only and "spec" in data:  # a spec change is a new generation
                    generation = int((current.get("metadata") or {}).get("generation") or 1)
                    data["metadata"]["generation"] = generation + 1

    async def _serve_list(self, request: kmock.Request) -> Any:
        result = dict(await super()._serve_list(request))
        result["items"] = [o for o in result["items"] if _selected(o, request.params)]
        result["metadata"] = {"resourceVersion": str(next(_versions))}
        # A real list says what it is (clients that decode by kind need it: helm's lookup).
        res = request.resource
        info = self.resources[res] if res is not None and res in self.resources else None
        if info is not None and info.kind:
            result.setdefault("kind", f"{info.kind}List")
            group = f"{res.group}/" if res.group else ""  # type: ignore[union-attr]
            result.setdefault("apiVersion", f"{group}{res.version}")  # type: ignore[union-attr]
        return result

    async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[Any]:
        since = request.params.get("resourceVersion")
        async for event in super()._serve_watch(request):
            if isinstance(event, dict):
                obj = event.get("object") or {}
                if not _selected(obj, request.params):
                    continue
                # KMock replays every object on every watch; a real server starts after `since`.
                rv = (obj.get("metadata") or {}).get("resourceVersion")
                if (
                    event.get("type") == "ADDED"
                    and since
                    and since.isdigit()
                    and rv
                    and str(rv).isdigit()
                    and int(rv) <= int(since)
                ):
                    continue
            yield event


DOCS = Path(__file__).resolve().parents[2] / "docs" / "operator.md"


def documented_rbac() -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) from the ```rbac block of docs/operator.md."""
    text = DOCS.read_text()
    block = text.split("```rbac\n", 1)[1].split("```", 1)[0]
    rules = set()
    for line in block.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        group, resource, *verbs = line.split()
        for verb in verbs:
            rules.add((group.strip('"'), resource, verb))
    return rules


def _b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


class Cluster:
    """The test's view of the emulated cluster: create, patch and read objects over HTTP."""

    def __init__(self, emulator: Emulator, url: str) -> None:
        self.k = emulator
        self.url = url
        self.http = httpx.AsyncClient(base_url=url, timeout=10)

    def path(self, resource: str, name: str | None = None, namespace: str = NS) -> str:
        group_version, plural = resource.rsplit("/", 1)
        base = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
        path = f"{base}/namespaces/{namespace}/{plural}"
        return f"{path}/{name}" if name else path

    async def create(self, resource: str, obj: dict[str, Any]) -> dict[str, Any]:
        r = await self.http.post(self.path(resource), json=obj)
        assert r.status_code < 300, r.text
        return dict(r.json())

    async def patch(self, resource: str, name: str, patch: dict[str, Any]) -> None:
        r = await self.http.patch(
            self.path(resource, name),
            json=patch,
            headers={"Content-Type": "application/merge-patch+json"},
        )
        assert r.status_code < 300, r.text

    async def delete(self, resource: str, name: str) -> None:
        r = await self.http.delete(self.path(resource, name))
        assert r.status_code < 300, r.text

    def get(self, resource: str, name: str) -> dict[str, Any] | None:
        try:
            obj = self.k.objects[resource, NS, name]
        except KeyError:
            return None
        return None if obj.deleted else dict(obj.raw)

    def history(self, resource: str, name: str) -> list[dict[str, Any]]:
        return [dict(v.raw) for v in self.k.objects[resource, NS, name].history if v is not None]

    def requests(self) -> list[kmock.Request]:
        """Every request the emulator has served, in order."""
        return list(self.k)

    def writes(self, plural: str, since: int = 0) -> list[Any]:
        """Requests that changed objects of a kind, from request number ``since`` on."""
        return [
            r
            for r in self.requests()[since:]
            if r.method in (kmock.method.POST, kmock.method.PATCH, kmock.method.PUT)
            and r.resource is not None
            and r.resource.plural == plural
        ]

    def operator_calls(self, since: int = 0) -> set[tuple[str, str, str]]:
        """(apiGroup, resource, verb) of the operator's requests (not the test's own httpx)."""
        calls = set()
        for r in self.requests()[since:]:
            if r.resource is None or r.resource.plural is None:
                continue  # discovery
            if str(r.headers.get("User-Agent", "")).startswith(("python-httpx", "clarion-")):
                continue  # the test itself, or the uninstall hook (its own service account)
            if r.method == kmock.method.GET:
                verb = "get" if r.name else "watch" if r.params.get("watch") else "list"
            else:
                verb = {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}[
                    str(r.method.value)
                ]
            plural = r.resource.plural + (f"/{r.subresource}" if r.subresource else "")
            calls.add((r.resource.group or "", plural, verb))
        return calls

    def watching(self, plural: str, since: int = 0) -> bool:
        return any(
            r.action == kmock.action.WATCH
            and r.resource is not None
            and r.resource.plural == plural
            for r in self.requests()[since:]
        )

    def events(self, reason: str) -> list[dict[str, Any]]:
        return [
            dict(o.raw)
            for (res, _, _), o in self.k.objects.items()
            if res.plural == "events" and not o.deleted and o.raw.get("reason") == reason
        ]

    # -- the objects of a test ------------------------------------------------

    async def secrets(self, vhost: Vhost, admin_token: str | None = "t") -> None:
        mgmt = MGMT_URL.replace("http://", "http://guest:guest@")
        await self.create(
            "v1/secrets",
            {
                "metadata": {"name": "clarion-rabbitmq"},
                "data": {"url": _b64(vhost.amqp_url), "managementUrl": _b64(mgmt)},
            },
        )
        if admin_token:
            await self.create(
                "v1/secrets",
                {"metadata": {"name": "clarion-auth"}, "data": {"adminToken": _b64(admin_token)}},
            )

    async def gateway(self, name: str, **spec: Any) -> dict[str, Any]:
        body = {
            "apiVersion": f"{names.CRD_GROUP}/{names.CRD_VERSION}",
            "kind": names.CRD_KIND,
            "metadata": {"name": name, "namespace": NS},
            "spec": {"image": "ghcr.io/example/clarion:test", "auth": {"mode": "none"}, **spec},
        }
        return await self.create(GATEWAY_RESOURCE, body)

    async def pod(self, gateway: str, proc: GatewayProcess) -> dict[str, Any]:
        """A pod object standing for a real gateway process: Running, Ready, its http port
        and, as the operator's Deployment has, its internal api port (/metrics, /admin)."""
        ports = [{"name": names.HTTP_PORT_NAME, "containerPort": proc.port}]
        if proc.pod_name in API_PORTS:
            ports.append({"name": "api", "containerPort": API_PORTS[proc.pod_name]})
        return await self.create(
            "v1/pods",
            {
                "metadata": {"name": proc.pod_name, "labels": names.gateway_labels(gateway)},
                "spec": {
                    "containers": [
                        {
                            "name": "gateway",
                            "image": "ghcr.io/example/clarion:test",
                            "ports": ports,
                        }
                    ]
                },
                "status": {
                    "phase": "Running",
                    "podIP": proc.host,
                    "conditions": [{"type": "Ready", "status": "True"}],
                },
            },
        )


def _emulator() -> Emulator:
    k = Emulator()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # KMock's importlib.resources use
        k.resources.load_bundled()
    info = k.resources[GATEWAY_RESOURCE]
    info.kind = names.CRD_KIND
    info.singular = "websocketgateway"
    info.namespaced = True
    info.verbs = {"list", "watch", "get", "create", "patch", "update", "delete"}
    info.shortnames = {"wsgw"}
    info.subresources = {"status"}
    for plural, kind, namespaced in (
        ("clusterkopfpeerings", "ClusterKopfPeering", False),
        ("kopfpeerings", "KopfPeering", True),
    ):
        peering = k.resources[f"kopf.dev/v1/{plural}"]
        peering.kind, peering.namespaced = kind, namespaced
        peering.verbs = {"list", "watch", "get", "patch", "create"}
    return k


@pytest.fixture
async def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Cluster]:
    """A fresh emulated API server, with KUBECONFIG pointing at it."""
    async with _emulator() as k, kmock.Server(k) as server:
        url = str(server.url).rstrip("/")
        config = tmp_path / "kubeconfig"
        config.write_text(
            "apiVersion: v1\nkind: Config\ncurrent-context: kmock\n"
            f"clusters: [{{name: kmock, cluster: {{server: '{url}'}}}}]\n"
            "users: [{name: kmock, user: {token: test}}]\n"
            "contexts: [{name: kmock, context: {cluster: kmock, user: kmock}}]\n"
        )
        monkeypatch.setenv("KUBECONFIG", str(config))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        c = Cluster(k, url)
        try:
            yield c
        finally:
            await c.http.aclose()


@pytest.fixture
def metrics_port(monkeypatch: pytest.MonkeyPatch) -> int:
    port = free_port()
    monkeypatch.setenv("CLARION_OPERATOR_METRICS_PORT", str(port))
    return port


@contextlib.asynccontextmanager
async def running_operator(
    cluster: Cluster, args: tuple[str, ...] = ("--standalone", "-A")
) -> AsyncIterator[Any]:
    """The real operator (``kopf run --standalone -A -m clarion_operator``) in its own thread.

    Returns once its watches are up, so objects created afterwards are seen live.
    """
    from kopf.testing import KopfRunner

    start = len(cluster.requests())
    runner = KopfRunner(["run", *args, "-m", "clarion_operator"], timeout=30, reraise=True)
    await asyncio.to_thread(runner.__enter__)
    try:
        for plural in ("pods", names.CRD_PLURAL):
            await wait_for(
                lambda p=plural: cluster.watching(p, start),  # type: ignore[misc]
                timeout=20,
                message=f"operator watching {plural}",
            )
        yield runner
    finally:
        await asyncio.to_thread(runner.__exit__, None, None, None)
    calls = cluster.operator_calls(start)
    OBSERVED.update(calls)
    undocumented = calls - documented_rbac()
    assert not undocumented, f"calls missing from docs/operator.md's RBAC list: {undocumented}"


#: Pod name -> the internal api port its process serves /metrics and /admin/shed on.
API_PORTS: dict[str, int] = {}


async def start_gateways(
    pod_factory: PodFactory, vhost: Vhost, *pod_names: str
) -> list[GatewayProcess]:
    """Real ``clarion serve`` processes from the test's ``pod_factory``, one per pod name,
    each on its own 127.0.0.x, with an internal api port as the operator's pods have
    (``--api-port``). Started off the event loop: KMock serves the operator on it."""
    made: list[GatewayProcess] = []
    for i, name in enumerate(pod_names):
        API_PORTS[name] = free_port()
        made += pod_factory(
            names=[name],
            hosts=[f"127.0.0.{10 + i}"],
            amqp_url=vhost.amqp_url,
            args=[
                "--auth",
                "none",
                "--admin-token",
                "t",
                "--drain-delay",
                "0",
                "--drain-window",
                "0",
                "--api-port",
                str(API_PORTS[name]),
                # Queues that outlive their pod, which the operator must delete (an
                # exclusive queue, the default, goes with its pod's connection).
                "--pod-queue-type",
                "classic",
            ],
            start=False,
        )
    return await asyncio.to_thread(pod_factory.start, made, 30)


async def queue_names(vhost: Vhost) -> set[str]:
    return {q["name"] for q in await asyncio.to_thread(vhost.queues)}


def record(what: str, seconds: float) -> None:
    """Keep a reaction time for the summary at the end of the run."""
    TIMINGS.append((what, seconds))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if OBSERVED:
        terminalreporter.section("kubernetes calls made by the operator")
        for call in sorted(OBSERVED):
            terminalreporter.write_line(" ".join(call))
    if TIMINGS:
        terminalreporter.section("operator reaction times")
        for what, seconds in TIMINGS:
            terminalreporter.write_line(f"{what}: {seconds:.2f} s")


def replicas(cluster: Cluster) -> int | None:
    """The replicas of gateway "gw"'s Deployment, None before the operator made it."""
    dep = cluster.get("apps/v1/deployments", "gw")
    return None if dep is None else dep["spec"].get("replicas")


#: ``operate(bounds, scaling)``: see the ``operate`` fixture.
Operate = Callable[
    [dict[str, int], dict[str, Any]],
    contextlib.AbstractAsyncContextManager[tuple[GatewayProcess, GatewayProcess]],
]


@pytest.fixture
def operate(cluster: Cluster, vhost: Vhost, pod_factory: PodFactory, metrics_port: int) -> Operate:
    """``async with operate(bounds, scaling) as (a, b)``: two real gateways (gw-a, gw-b) and
    the operator running gateway "gw" with these replica bounds and scaling, its
    Deployment at the minimum."""

    @contextlib.asynccontextmanager
    async def operated(
        bounds: dict[str, int], scaling: dict[str, Any]
    ) -> AsyncIterator[tuple[GatewayProcess, GatewayProcess]]:
        a, b = await start_gateways(pod_factory, vhost, "gw-a", "gw-b")
        await cluster.secrets(vhost)
        async with running_operator(cluster):
            await cluster.gateway("gw", replicas=bounds, scaling=scaling)
            await wait_for(
                lambda: replicas(cluster) == bounds["min"], 20, message="Deployment at min replicas"
            )
            yield a, b

    return operated
