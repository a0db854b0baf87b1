"""Bad input never kills the pod or another client's session.

One real pod (in-process: the real app under a real uvicorn, on real sockets);
each bad frame or body gets a clear error, the offending socket stays usable
(except where the protocol closes it), and an innocent client on the same pod
keeps receiving.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from .support import InProcessPod
from .wsclient import Client

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def pod() -> Iterator[InProcessPod]:
    with InProcessPod(f"bad-{uuid.uuid4().hex[:6]}", auth="none", api_keys=["k1"]) as p:
        yield p


@pytest.fixture
async def bystander(pod: InProcessPod) -> AsyncIterator[Client]:
    c = await Client.connect(f"{pod.ws_url}?user=bystander", "bystander")
    await c.wait_welcome()
    yield c
    await c.close()


@pytest.fixture
async def client(pod: InProcessPod) -> AsyncIterator[Client]:
    c = await Client.connect(f"{pod.ws_url}?user=offender", "offender")
    await c.wait_welcome()
    yield c
    await c.close()


def publish(
    pod: InProcessPod, body: object, key: str = "k1", raw: bytes | None = None
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if raw is not None:
        return httpx.post(f"{pod.http_url}/api/publish", content=raw, headers=headers, timeout=10)
    return httpx.post(f"{pod.http_url}/api/publish", json=body, headers=headers, timeout=10)


async def assert_still_alive(pod: InProcessPod, client: Client, bystander: Client) -> None:
    """The offender's socket still answers, the bystander still gets messages, the pod is up."""
    n = len(client.of_type("pong"))
    await client.send({"type": "ping"})
    await client.wait_frame(lambda f: len(client.of_type("pong")) > n, what="pong")
    marker = uuid.uuid4().hex
    assert publish(pod, {"user": "bystander", "data": marker}).status_code == 202
    await bystander.wait_data(marker)
    assert httpx.get(f"{pod.http_url}/healthz").status_code == 200


async def expect_error(client: Client, code: str) -> dict[str, object]:
    frame: dict[str, object] = await client.wait_frame(
        lambda f: isinstance(f, dict) and f.get("type") == "error" and f.get("code") == code,
        what=f"error {code}",
    )
    assert isinstance(frame["message"], str) and frame["message"]
    return frame


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{not json", "bad_json"),
        ("[1, 2, 3]", "bad_frame"),
        ("42", "bad_frame"),
        ('"a string"', "bad_frame"),
        ('{"type": "launch-missiles"}', "unknown_type"),
        ('{"channel": "news"}', "missing_field"),
        ('{"type": "subscribe"}', "missing_field"),
        ('{"type": "subscribe", "channel": 5}', "bad_field"),
        ('{"type": 7}', "bad_field"),
        ('{"type": "subscribe", "channel": ""}', "bad_field"),
        ('{"type": "subscribe", "channel": "c", "since": "yesterday"}', "bad_field"),
        ('{"type": "publish", "broadcast": true, "data": 1}', "forbidden"),
        ("hello, bare text", "bad_json"),  # bare text is chat only where clients may publish
    ],
    ids=[
        "not-json",
        "json-array",
        "json-number",
        "json-string",
        "unknown-type",
        "missing-type",
        "missing-channel",
        "mistyped-channel",
        "mistyped-type",
        "empty-channel",
        "bad-since",
        "publish-not-allowed",
        "bare-text-without-client-publish",
    ],
)
async def test_bad_frame_gets_error_frame_and_socket_stays_open(
    pod: InProcessPod, client: Client, bystander: Client, frame: str, code: str
) -> None:
    await client.send(frame)
    await expect_error(client, code)
    assert not client.closed
    await assert_still_alive(pod, client, bystander)


async def test_publish_frame_without_data_is_an_error(
    pod: InProcessPod, client: Client, bystander: Client
) -> None:
    await client.send({"type": "publish", "user": "x"})
    # Client publishing is off here, but the frame is invalid first.
    await expect_error(client, "missing_field")
    await assert_still_alive(pod, client, bystander)


async def test_binary_frame_gets_error_frame(
    pod: InProcessPod, client: Client, bystander: Client
) -> None:
    await client.send(b"\x00\x01binary")
    await expect_error(client, "binary_unsupported")
    await assert_still_alive(pod, client, bystander)


async def test_frame_over_one_mib_closes_1009_and_only_that_socket(
    pod: InProcessPod, client: Client, bystander: Client
) -> None:
    await client.send("x" * (1024 * 1024 + 1))
    assert await client.wait_closed() == 1009
    marker = uuid.uuid4().hex
    assert publish(pod, {"user": "bystander", "data": marker}).status_code == 202
    await bystander.wait_data(marker)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{nope", "not valid JSON"),
        (b"[1]", "JSON object"),
        (b'{"data": 1}', "exactly one of"),
        (b'{"user": "u", "channel": "c", "data": 1}', "exactly one of"),
        (b'{"user": 5, "data": 1}', "'user' must be a string"),
        (b'{"broadcast": "yes", "data": 1}', "'broadcast' must be true"),
        (b'{"user": "u"}', "'data' is required"),
        (b'{"messages": []}', "non-empty list"),
        (b'{"messages": [{"user": "u", "data": 1}, {"user": "u"}]}', "messages[1]"),
    ],
)
def test_bad_publish_body_is_400_with_reason(pod: InProcessPod, body: bytes, fragment: str) -> None:
    r = publish(pod, None, raw=body)
    assert r.status_code == 400
    assert fragment in r.json()["message"]
    assert r.json()["error"]


async def test_bad_batch_publishes_nothing(pod: InProcessPod, bystander: Client) -> None:
    body = {"messages": [{"user": "bystander", "data": "first"}, {"user": "bystander"}]}
    assert publish(pod, body).status_code == 400
    marker = uuid.uuid4().hex
    assert publish(pod, {"user": "bystander", "data": marker}).status_code == 202
    await bystander.wait_data(marker)
    assert "first" not in bystander.data()


def test_body_over_one_mib_is_413(pod: InProcessPod) -> None:
    raw = b'{"broadcast": true, "data": "' + b"x" * (1024 * 1024) + b'"}'
    r = publish(pod, None, raw=raw)
    assert r.status_code == 413
    assert httpx.get(f"{pod.http_url}/healthz").status_code == 200


@pytest.mark.parametrize("key", ["", "wrong"])
def test_publish_without_valid_api_key_is_401(pod: InProcessPod, key: str) -> None:
    r = publish(pod, {"broadcast": True, "data": 1}, key=key)
    assert r.status_code == 401
