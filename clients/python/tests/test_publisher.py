"""The publishers' retries and idempotency keys, against a scripted HTTP transport (the
end-to-end tests against real pods are the repository's tests/test_publish_batching.py)."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest
from fakes import fast

from clarion_client import AsyncPublisher, Publisher, PublishError, message

pytestmark = pytest.mark.timeout(30)


def scripted_transport(statuses: list[int | Exception]) -> tuple[httpx.MockTransport, list[Any]]:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = statuses[len(seen) - 1]
        if isinstance(answer, Exception):
            raise answer
        if answer == 202:
            body = orjson.loads(request.content)
            if "messages" in body:
                return httpx.Response(
                    202, json={"ids": [f"id{i}" for i in range(len(body["messages"]))]}
                )
            return httpx.Response(202, json={"id": "id0"})
        return httpx.Response(answer, json={"error": "x", "message": f"status {answer}"})

    return httpx.MockTransport(handle), seen


CONNECT_ERROR = httpx.ConnectError("refused")


def test_publisher_retries_503_and_connection_errors_with_one_idempotency_key() -> None:
    transport, seen = scripted_transport([503, CONNECT_ERROR, httpx.ReadTimeout("t"), 202])
    with Publisher(
        "http://gw", "key", backoff=fast(), client=httpx.Client(transport=transport)
    ) as p:
        assert p.publish({"a": 1}, user="u1") == "id0"
    keys = {r.headers["Idempotency-Key"] for r in seen}
    assert len(seen) == 4 and len(keys) == 1
    assert all(r.headers["Authorization"] == "Bearer key" for r in seen)
    assert orjson.loads(seen[0].content) == {"user": "u1", "data": {"a": 1}}


@pytest.mark.parametrize("status", [502, 504])
def test_a_proxy_s_gateway_error_is_retried_with_the_same_key(status: int) -> None:
    """A proxy in front of the pods (nginx, an Ingress) answers 502/504 when the pod it
    chose died or hung mid-request: whether that pod took the message is unknown, and the
    idempotency key makes the retry safe."""
    transport, seen = scripted_transport([status, status, 202])
    with Publisher("http://gw", backoff=fast(), client=httpx.Client(transport=transport)) as p:
        assert p.publish({"a": 1}, user="u1") == "id0"
    assert len(seen) == 3 and len({r.headers["Idempotency-Key"] for r in seen}) == 1


@pytest.mark.parametrize("status", [502, 504])
def test_a_gateway_error_that_persists_names_its_status(status: int) -> None:
    transport, seen = scripted_transport([status] * 3)
    p = Publisher("http://gw", retries=2, backoff=fast(), client=httpx.Client(transport=transport))
    with pytest.raises(PublishError) as exc:
        p.publish(1, channel="c")
    assert exc.value.status == status and len(seen) == 3


@pytest.mark.parametrize("status", [400, 401, 413, 500, 501])
def test_publisher_does_not_retry_a_refusal(status: int) -> None:
    transport, seen = scripted_transport([status, 202])
    p = Publisher("http://gw", backoff=fast(), client=httpx.Client(transport=transport))
    with pytest.raises(PublishError) as exc:
        p.publish(1, broadcast=True)
    assert exc.value.status == status and len(seen) == 1


def test_publisher_gives_up_after_its_retries() -> None:
    transport, seen = scripted_transport([503] * 3)
    p = Publisher("http://gw", retries=2, backoff=fast(), client=httpx.Client(transport=transport))
    with pytest.raises(PublishError) as exc:
        p.publish(1, channel="c")
    assert exc.value.status == 503 and len(seen) == 3


@pytest.mark.parametrize(
    "targets", [{}, {"user": "u", "channel": "c"}, {"user": "u", "broadcast": True}]
)
def test_publish_needs_exactly_one_target(targets: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Publisher("http://gw").publish(1, **targets)


async def test_async_publisher_batch_keys_each_message_the_same_on_every_retry() -> None:
    """Each message of a batch carries its own idempotency key, kept across retries."""
    transport, seen = scripted_transport([503, 202])
    async with AsyncPublisher(
        "http://gw/", backoff=fast(), client=httpx.AsyncClient(transport=transport)
    ) as p:
        batch = [message(1, user="u"), {**message(2, channel="c"), "idempotency_key": "mine"}]
        assert await p.publish_batch(batch) == ["id0", "id1"]
    assert str(seen[0].url) == "http://gw/api/publish"
    first, second = (orjson.loads(r.content)["messages"] for r in seen)
    assert first == second  # a retry sends the same keys
    assert [m["data"] for m in second] == [1, 2] and second[1]["idempotency_key"] == "mine"
    assert len({m["idempotency_key"] for m in second}) == 2
    assert "Idempotency-Key" not in seen[1].headers and "Authorization" not in seen[1].headers
