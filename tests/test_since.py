"""Every value of ``since`` ends in a clear answer, and never leaves a socket behind.

``since`` is client-supplied (on connect and on subscribe). A well-formed id
whose timestamp is out of range once crashed the session: the client got no
close frame and the dead socket stayed counted in ``clarion_connections``
(which the operator scales on) and against ``--max-connections``. After every
case here the pod's connection count returns to what it was.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from clarion.message import new_message_id

from .support import GatewayProcess, PodFactory, Vhost, wait_for
from .wsclient import Client

pytestmark = pytest.mark.timeout(90)

NOW_MS = int(time.time() * 1000)
A_YEAR_AHEAD = new_message_id(NOW_MS + 365 * 86_400_000)
AN_HOUR_AHEAD = new_message_id(NOW_MS + 3_600_000)
VERSION_4 = str(uuid.uuid4())
A_MONTH_AGO = new_message_id(NOW_MS - 30 * 86_400_000)
JUST_NOW = new_message_id()
#: Test ids for the values made at import: the same in every process that collects them
#: (each xdist worker collects the suite and must find the same tests).
MADE_NOW = {
    A_YEAR_AHEAD: "a-year-ahead",
    AN_HOUR_AHEAD: "an-hour-ahead",
    VERSION_4: "version-4",
    A_MONTH_AGO: "a-month-ago",
    JUST_NOW: "just-now",
}
#: Well-formed (36 characters, hex, version 7) but naming no message that can exist.
OUT_OF_RANGE = ["ffffffff-ffff-7fff-bfff-ffffffffffff", A_YEAR_AHEAD, AN_HOUR_AHEAD]
#: Not a message id at all.
MALFORMED = [
    "",
    "x",
    "not-a-message-id-not-a-message-id-xx",
    VERSION_4,
    "FFFFFFFF-FFFF-7FFF-BFFF-FFFFFFFFFFFFX",
    "zzzzzzzz-zzzz-7zzz-bzzz-zzzzzzzzzzzz",
    "0" * 36,
]
#: Valid ids a client may well send: ancient, of the epoch, and just now (unknown).
PLAUSIBLE = [
    # (…-7000-8000-000000000000 would be a position: tests/test_position.py)
    "00000000-0000-7000-8000-000000000001",
    A_MONTH_AGO,
    JUST_NOW,
]


def case_id(since: object) -> str | None:
    return MADE_NOW.get(since) if isinstance(since, str) else None


@pytest.fixture(scope="module")
def pod(module_vhost: Vhost, module_pod_factory: PodFactory) -> Iterator[GatewayProcess]:
    args = ["--auth", "none", "--api-key", "k"]
    (p,) = module_pod_factory(1, "since", amqp_url=module_vhost.amqp_url, args=args)
    yield p
    p.stop()
    assert "Traceback" not in p.log(), p.log()


def connections(pod: GatewayProcess) -> int:
    return int(httpx.get(f"{pod.http_url}/readyz", timeout=5).json()["connections"])


async def settle(pod: GatewayProcess, expected: int) -> None:
    await wait_for(lambda: connections(pod) == expected, 5, message=f"{expected} connections")


@pytest.mark.parametrize("since", OUT_OF_RANGE + MALFORMED + PLAUSIBLE, ids=case_id)
async def test_since_on_connect_gets_a_welcome_and_leaves_nothing_behind(
    pod: GatewayProcess, since: str
) -> None:
    before = connections(pod)
    c = await Client.connect(f"{pod.ws_url}?user=s&since={since}", "since")
    welcome = await c.wait_welcome()
    assert welcome["recovered"] is False
    if since in OUT_OF_RANGE + MALFORMED:
        err = await c.wait_reply("error")
        assert err["code"] == "bad_field" and "since" in err["message"]
    await c.send({"type": "ping"})
    await c.wait_reply("pong")  # the session still works
    await c.close()
    await settle(pod, before)


@pytest.mark.parametrize(
    "since", [*OUT_OF_RANGE, *MALFORMED, *PLAUSIBLE, 0, 1.5, True, [], {}, None], ids=case_id
)
async def test_since_on_subscribe_gets_an_answer_and_the_socket_lives(
    pod: GatewayProcess, since: Any
) -> None:
    before = connections(pod)
    c = await Client.connect(f"{pod.ws_url}?user=s", "since")
    await c.wait_welcome()
    await c.send({"type": "subscribe", "channel": "news", "since": since})
    reply = await c.wait_frame(
        lambda f: isinstance(f, dict) and f.get("type") in ("subscribed", "error"), 10, "answer"
    )
    if since is None or since in PLAUSIBLE:
        assert reply["type"] == "subscribed"
        if since is not None:
            assert reply["recovered"] is False
    else:
        assert reply["type"] == "error" and reply["code"] == "bad_field", reply
    await c.send({"type": "ping"})
    await c.wait_reply("pong")
    await c.close()
    await settle(pod, before)


async def test_the_crash_case_of_the_report_closes_nothing_and_counts_right(
    pod: GatewayProcess,
) -> None:
    before = connections(pod)
    clients = [
        await Client.connect(f"{pod.ws_url}?user=s&since={OUT_OF_RANGE[0]}", f"c{i}")
        for i in range(5)
    ]
    for c in clients:
        await c.wait_welcome()
    await settle(pod, before + 5)
    for c in clients:
        await c.close()
    await settle(pod, before)
