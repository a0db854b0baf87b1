"""No secret reaches a log line; broker trouble is one readable line; pods are named on the broker.

Browsers put their JWT in ``?token=``, and uvicorn logs each WebSocket's path
with its query string. Each case here runs a real pod and greps its whole log.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import httpx
import jwt
import pytest
import websockets

from .support import MGMT_AUTH, MGMT_URL, GatewayProcess, PodFactory, Vhost, wait_for, wait_for_sync

pytestmark = pytest.mark.timeout(60)

JWT_SECRET = "jwt-secret-" + uuid.uuid4().hex
API_KEY = "api-key-" + uuid.uuid4().hex
ADMIN_TOKEN = "admin-token-" + uuid.uuid4().hex


def token(sub: str, **claims: object) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time()) + 60, **claims}, JWT_SECRET, "HS256")


@pytest.fixture
def broker_user(vhost: Vhost) -> Iterator[tuple[str, str]]:
    """A RabbitMQ user with a password nobody else has, allowed on the test's vhost."""
    name, password = f"clarion-log-{uuid.uuid4().hex[:6]}", "amqp-pw-" + uuid.uuid4().hex
    with httpx.Client(base_url=MGMT_URL, auth=MGMT_AUTH, timeout=10) as c:
        c.put(f"/api/users/{name}", json={"password": password, "tags": ""}).raise_for_status()
        c.put(
            f"/api/permissions/{vhost.quoted}/{name}",
            json={"configure": ".*", "write": ".*", "read": ".*"},
        ).raise_for_status()
        yield name, password
        c.delete(f"/api/users/{name}")


def amqp_url(user: str, password: str, vhost: Vhost) -> str:
    return f"amqp://{user}:{password}@127.0.0.1:5672/{vhost.quoted}"


@pytest.fixture
def pod(vhost: Vhost, broker_user: tuple[str, str], pod_factory: PodFactory) -> GatewayProcess:
    args = ["--jwt-secret", JWT_SECRET, "--api-key", API_KEY, "--admin-token", ADMIN_TOKEN]
    (p,) = pod_factory(1, "logs", amqp_url=amqp_url(*broker_user, vhost), args=args)
    return p


async def test_no_token_key_or_password_in_the_log(
    pod: GatewayProcess, broker_user: tuple[str, str]
) -> None:
    good, expired = token("u1"), token("u2", exp=int(time.time()) - 10)
    forged = jwt.encode({"sub": "u3"}, "not-the-secret", "HS256")
    secrets = [good, expired, forged, JWT_SECRET, API_KEY, ADMIN_TOKEN, broker_user[1]]
    async with websockets.connect(f"{pod.ws_url}?token={good}&since=x") as ws:
        assert '"welcome"' in await ws.recv()
    for refused in (expired, forged):
        async with websockets.connect(f"{pod.ws_url}?token={refused}") as ws:
            with pytest.raises(websockets.ConnectionClosed):
                await ws.recv()
    async with websockets.connect(
        pod.ws_url, additional_headers={"Authorization": f"Bearer {good}"}
    ) as ws:
        assert '"welcome"' in await ws.recv()
    async with httpx.AsyncClient(timeout=10) as http:
        for key in (API_KEY, "wrong-" + API_KEY):
            await http.post(
                f"{pod.http_url}/api/publish",
                json={"broadcast": True, "data": 1},
                headers={"Authorization": f"Bearer {key}"},
            )
        await http.post(
            f"{pod.http_url}/admin/shed",
            json={"count": 0},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
    await wait_for(lambda: "[accepted]" in pod.log(), 5, message="uvicorn's WebSocket log line")
    log = pod.log()
    assert "token=REDACTED" in log  # the line is there, the token is not
    for secret in secrets:
        assert secret not in log


def test_a_broker_that_refuses_the_login_is_one_line_without_the_password(
    vhost: Vhost, pod_factory: PodFactory
) -> None:
    password = "wrong-pw-" + uuid.uuid4().hex
    (p,) = pod_factory(1, "refused", amqp_url=amqp_url("guest", password, vhost), start=False)
    p.start()
    try:
        wait_for_sync(lambda: "ACCESS_REFUSED" in p.log(), 10, message="the refusal logged")
    finally:
        p.stop()
    log = p.log()
    assert password not in log
    assert "Traceback" not in log and "object at 0x" not in log
    assert next(line for line in log.splitlines() if "ACCESS_REFUSED" in line).startswith("20")


@pytest.mark.broker  # the shared node answers that the vhost does not exist
def test_a_missing_vhost_says_so_in_one_line(pod_factory: PodFactory) -> None:
    url = "amqp://guest:guest@127.0.0.1:5672/no-such-vhost-" + uuid.uuid4().hex[:6]
    (p,) = pod_factory(1, "novhost", amqp_url=url, start=False)
    p.start()
    try:
        wait_for_sync(lambda: "vhost does not exist" in p.log(), 10, message="the reason logged")
    finally:
        p.stop()
    assert "object at 0x" not in p.log() and "Traceback" not in p.log()


async def test_the_pod_is_named_on_the_broker_and_a_forced_close_is_one_line(
    pod: GatewayProcess,
) -> None:
    def connection() -> str | None:
        for c in httpx.get(f"{MGMT_URL}/api/connections", auth=MGMT_AUTH, timeout=5).json():
            if (c.get("client_properties") or {}).get("connection_name") == pod.pod_name:
                return str(c["name"])
        return None

    name = await wait_for(connection, 15, 0.5, "the pod's named connection in the management API")
    httpx.delete(
        f"{MGMT_URL}/api/connections/{name}",
        auth=MGMT_AUTH,
        headers={"X-Reason": "closed by the test"},
        timeout=5,
    )
    await wait_for(lambda: "closed by the test" in pod.log(), 10, message="the reason logged")
    wait_for_sync(pod.ready, 15, 0.2, "the pod reconnected")
    lines = [line for line in pod.log().splitlines() if "closed by the test" in line]
    assert len(lines) == 1 and "CONNECTION_FORCED" in lines[0], lines
    assert "Traceback" not in pod.log()
