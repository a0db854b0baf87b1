"""The publish API fails closed, and can live on an internal port of its own.

With ``--auth jwt`` and no API key a pod refuses to start (a wrong Secret key
name used to open the API to anyone); ``--public-api`` opens it on purpose.
With ``--api-port`` the public port serves only what browsers need.
"""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest
import websockets

from .support import GatewayProcess, PodFactory, free_port, wait_for
from .wsclient import Client

pytestmark = pytest.mark.timeout(60)


def serve_exits(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clarion", "serve", "--port", str(free_port()), *args],
        env={"PATH": "/usr/bin:/bin", **(env or {})},
        capture_output=True,
        text=True,
        timeout=20,
    )


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--jwt-secret", "s" * 32], {}),
        (["--jwt-secret", "s" * 32], {"CLARION_API_KEYS": ""}),
        (["--jwt-secret", "s" * 32], {"CLARION_API_KEYS": " , "}),
        (["--jwt-secret", "s" * 32, "--no-public-api"], {}),
        (["--jwt-secret", "s" * 32], {"CLARION_PUBLIC_API": "false"}),
    ],
    ids=["no-key", "empty-var", "blank-items", "no-public-api", "public-api-false"],
)
def test_jwt_auth_without_an_api_key_refuses_to_start(args: list[str], env: dict[str, str]) -> None:
    proc = serve_exits(*args, env=env)
    assert proc.returncode == 2, proc.stderr
    assert "--api-key" in proc.stderr and "--public-api" in proc.stderr


@pytest.mark.parametrize(
    "args",
    [["--port", "9123", "--api-port", "9123"], ["--api-port", "70000"], ["--api-port", "-1"]],
)
def test_a_bad_api_port_is_refused(args: list[str]) -> None:
    proc = serve_exits("--auth", "none", *args)
    assert proc.returncode == 2 and "--api-port" in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--public-api"], {}),
        ([], {"CLARION_PUBLIC_API": "true"}),
        (["--auth", "none"], {}),
    ],
    ids=["flag", "env", "auth-none"],
)
def test_an_open_api_starts_only_when_asked_and_says_so(
    args: list[str], env: dict[str, str], pod_factory: PodFactory
) -> None:
    (pod,) = pod_factory(1, "open", args=["--jwt-secret", "s" * 32, *args], env=env)
    assert "POST /api/publish IS OPEN" in pod.log()
    r = httpx.post(f"{pod.http_url}/api/publish", json={"broadcast": True, "data": 1})
    assert r.status_code == 202


@pytest.fixture
def split(pod_factory: PodFactory) -> tuple[GatewayProcess, str]:
    api_port = free_port()
    args = ["--auth", "none", "--api-key", "k", "--admin-token", "t", "--api-port", str(api_port)]
    (pod,) = pod_factory(1, "split", args=args)
    return pod, f"http://{pod.host}:{api_port}"


async def test_the_internal_port_has_the_api_and_the_public_port_does_not(
    split: tuple[GatewayProcess, str],
) -> None:
    pod, api = split
    public = pod.http_url
    client = await Client.connect(f"{pod.ws_url}?user=u1", "u1")
    await client.wait_welcome()
    auth = {"Authorization": "Bearer k"}
    async with httpx.AsyncClient(timeout=10) as http:
        body = {"user": "u1", "data": "hello"}
        assert (
            await http.post(f"{public}/api/publish", json=body, headers=auth)
        ).status_code == 404
        r = await http.post(f"{api}/api/publish", json=body, headers=auth)
        assert r.status_code == 202
        await client.wait_data("hello")
        assert (await http.get(f"{public}/metrics")).status_code == 404
        assert "clarion_connections 1.0" in (await http.get(f"{api}/metrics")).text
        shed = {"Authorization": "Bearer t"}
        r = await http.post(f"{public}/admin/shed", json={"count": 0}, headers=shed)
        assert r.status_code == 404
        r = await http.post(f"{api}/admin/shed", json={"count": 0}, headers=shed)
        assert r.status_code == 200
        for base in (public, api):  # probes may use either
            assert (await http.get(f"{base}/healthz")).status_code == 200
            assert (await http.get(f"{base}/readyz")).status_code == 200
    with pytest.raises(websockets.InvalidStatus):
        await websockets.connect(f"{api.replace('http', 'ws')}/ws?user=x", open_timeout=5)
    await client.close()
    await wait_for(
        lambda: httpx.get(f"{api}/readyz").json()["connections"] == 0, 5, message="socket gone"
    )
