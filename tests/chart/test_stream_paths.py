"""The chart lets clients reach every path of the public port: the WebSocket and the HTTP
streams that replace it where it is blocked (issue 20, item 4).

Rendered with real helm: the Ingress and the HTTPRoute send ``/ws``, ``/sse``,
``/stream`` and ``POST /emulation`` (and the demo page) to the public Service,
ingress-nginx does not buffer the streams, and the NetworkPolicy lets an
ingress controller in another namespace reach the port that serves them; a real
pod serves each of these paths on that port.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from tests.support import InProcessPod

from .helpers import RELEASE, kubernetes_validate, one, render
from .test_network_policy import GATEWAY, STRANGER, reaches

pytestmark = pytest.mark.timeout(60)

#: What clients reach on the public port ("http"), with the method each takes.
CLIENT_PATHS = {"/": "GET", "/ws": "GET", "/sse": "GET", "/stream": "GET", "/emulation": "POST"}

EXPOSED = [
    "ingress.enabled=true",
    "ingress.className=nginx",
    "ingress.hosts[0]=push.example.com",
    "httpRoute.enabled=true",
    "httpRoute.parentRefs[0].name=public",
    "networkPolicy.enabled=true",
]


def prefix_matches(prefix: str, path: str) -> bool:
    """Ingress ``Prefix`` and HTTPRoute ``PathPrefix``: whole path elements."""
    base = prefix.rstrip("/")
    return not base or path == base or path.startswith(base + "/")


def ingress_backend(ing: dict[str, Any], path: str) -> dict[str, Any] | None:
    """The backend of the longest rule matching ``path`` (as ingress controllers pick)."""
    best: tuple[int, dict[str, Any]] | None = None
    for entry in ing["spec"]["rules"][0]["http"]["paths"]:
        assert entry["pathType"] in ("Prefix", "Exact"), entry
        hit = (
            prefix_matches(entry["path"], path)
            if entry["pathType"] == "Prefix"
            else entry["path"] == path
        )
        if hit and (best is None or len(entry["path"]) > best[0]):
            best = (len(entry["path"]), entry["backend"]["service"])
    return None if best is None else best[1]


def route_backends(route: dict[str, Any], path: str, method: str) -> list[Any] | None:
    for rule in route["spec"]["rules"]:
        for match in rule.get("matches") or [{"path": {"type": "PathPrefix", "value": "/"}}]:
            if match.get("method", method) != method:
                continue
            p = match.get("path", {"type": "PathPrefix", "value": "/"})
            if p["type"] == "PathPrefix" and prefix_matches(p["value"], path):
                return list(rule["backendRefs"])
    return None


def test_ingress_and_httproute_route_the_streams_to_the_public_service() -> None:
    docs = render(EXPOSED)
    ing, route = one(docs, "Ingress"), one(docs, "HTTPRoute")
    for path, method in CLIENT_PATHS.items():
        assert ingress_backend(ing, path) == {"name": RELEASE, "port": {"number": 80}}, path
        assert route_backends(route, path, method) == [{"name": RELEASE, "port": 80}], path
    # ingress-nginx would hold a stream's frames back in its buffer; a stream lasts long.
    annotations = ing["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 60
    assert route["spec"]["rules"][0]["timeouts"]["request"] == "0s"
    # An ingress controller in its own namespace reaches the port that serves them.
    assert reaches(docs, STRANGER, GATEWAY, "http")
    kubernetes_validate(docs)


def test_a_pod_serves_every_client_path_on_its_public_port() -> None:
    with InProcessPod(auth="none") as pod, httpx.Client(timeout=5) as http:
        for path, method in CLIENT_PATHS.items():
            if path == "/ws":
                with connect(f"{pod.ws_url}?user=u", open_timeout=5) as ws:
                    assert json.loads(ws.recv(5))["type"] == "welcome"
                continue
            if method == "POST":
                r = http.post(f"{pod.http_url}{path}", content=b"{}")
                assert r.status_code == 400 and r.json()["error"] == "bad_body", path
                continue
            if path == "/":
                assert http.get(pod.http_url + path).status_code == 200
                continue
            with http.stream("GET", f"{pod.http_url}{path}?user=u") as r:
                assert r.status_code == 200, path
