"""``clarion publish`` and ``clarion listen`` on clarion_client: DATA that looks like JSON
must be JSON, the API key from CLARION_API_KEYS, listen stops on terminal codes and backs
off by the close-code policy."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import jwt
import orjson
import pytest

from clarion import cli

from .support import InProcessPod, wait_for_sync

pytestmark = pytest.mark.timeout(60)

SECRET = "cli-client-secret-0123456789abcdef"


@pytest.fixture(scope="module")
def pod() -> Iterator[InProcessPod]:
    with InProcessPod(
        f"cli-{uuid.uuid4().hex[:6]}",
        auth="jwt",
        jwt_secret=SECRET,
        api_keys=["first-key", "second-key"],
        max_connections=2,
    ) as p:
        yield p


@pytest.mark.parametrize(
    ("text", "data"),
    [
        ('{"a": 1}', {"a": 1}),
        ("[1, 2]", [1, 2]),
        ('"quoted"', "quoted"),
        ("42", 42),
        ("-1.5", -1.5),
        ("true", True),
        ("null", None),
        ("hello", "hello"),
        ("3 apples", "3 apples"),
        ("true story", "true story"),
        ("", ""),
        ("a {b}", "a {b}"),
    ],
)
def test_data_is_json_or_plain_text(text: str, data: Any) -> None:
    assert cli.publish_data(text) == data


@pytest.mark.parametrize(
    "text",
    ['{"a":', "{", "[1,", '"unterminated', '  {"a": 1', "[}", '{"a": 1} trailing', "{'a': 1}"],
)
def test_data_that_starts_like_json_must_be_json(text: str) -> None:
    with pytest.raises(ValueError, match="looks like JSON"):
        cli.publish_data(text)


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 20) -> Any:
    base = {"PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-m", "clarion", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**base, **(env or {})},
    )


def published(pod: InProcessPod) -> float:
    return pod.metric("clarion_messages_published_total")


def test_publish_refuses_malformed_json_with_exit_2_and_sends_nothing(pod: InProcessPod) -> None:
    before = published(pod)
    r = run_cli("publish", "--url", pod.http_url, "--user", "u", '{"a":', env=keys())
    assert r.returncode == 2
    assert "looks like JSON but is not valid JSON" in r.stderr and r.stdout == ""
    assert published(pod) == before


def keys(value: str = "first-key,second-key") -> dict[str, str]:
    return {"CLARION_API_KEYS": value}


def test_publish_reads_the_first_key_of_clarion_api_keys(
    pod: InProcessPod, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLARION_API_KEYS", "first-key,second-key")
    assert cli.main(["publish", "--url", pod.http_url, "--user", "u", "plain text"]) == 0
    assert len(capsys.readouterr().out.strip()) == 36
    monkeypatch.setenv("CLARION_API_KEYS", "wrong-key,first-key")  # only the first is used
    assert cli.main(["publish", "--url", pod.http_url, "--broadcast", "1"]) == 1
    assert "HTTP 401" in capsys.readouterr().err
    monkeypatch.delenv("CLARION_API_KEYS")
    assert cli.main(["publish", "--url", pod.http_url, "--broadcast", "1"]) == 1


def test_publish_gives_up_on_an_unreachable_pod(capsys: pytest.CaptureFixture[str]) -> None:
    from testkit.net import free_port

    url = f"http://127.0.0.1:{free_port('127.0.0.1')}"
    assert cli.main(["publish", "--url", url, "--retries", "1", "--user", "u", "x"]) == 1
    assert "unreachable" in capsys.readouterr().err


def token(sub: str, **claims: Any) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time()) + 300, **claims}, SECRET)


def test_listen_stops_at_once_on_a_rejected_token(pod: InProcessPod) -> None:
    """Issue 15: it used to retry a rejected token every 0.3-0.7 s forever."""
    closed = {"reason": "unauthorized"}
    before = pod.metric("clarion_connections_closed_total", closed)
    forged = jwt.encode({"sub": "x", "exp": int(time.time()) + 300}, "forged-" * 6)
    start = time.monotonic()
    r = run_cli("listen", pod.ws_url, "--token", forged)
    assert r.returncode == 1 and time.monotonic() - start < 10
    assert "stopped: 4500" in r.stderr and "reconnecting" not in r.stderr
    assert pod.metric("clarion_connections_closed_total", closed) - before == 1


def test_listen_backs_off_at_least_2s_from_a_full_pod(pod: InProcessPod) -> None:
    """1013: two sockets already fill the pod; each retry waits at least 2 s."""
    import asyncio

    from clarion_client import Subscriber

    async def hold_and_listen() -> Any:
        holders = [Subscriber(pod.ws_url, token=token(f"h{i}")) for i in range(2)]
        for h in holders:
            h.start()
        try:
            while not all(h.state == "connected" for h in holders):
                await asyncio.sleep(0.02)
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "clarion", "listen", pod.ws_url, "--token",
                token("late"), "--max-retries", "1",
                stderr=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            _, err = await asyncio.wait_for(proc.communicate(), 20)
            return proc.returncode, err.decode()
        finally:
            for h in holders:
                await h.close()

    rc, err = asyncio.run(hold_and_listen())
    assert rc == 1, err
    delays = [
        float(line.rsplit(" ", 1)[1].rstrip("s"))
        for line in err.splitlines()
        if "reconnecting in" in line
    ]
    assert len(delays) == 1 and delays[0] >= 2.0, err
    assert "closed 1013 pod full" in err and "stopped: 1013" in err


def test_listen_prints_messages_as_json_lines(pod: InProcessPod) -> None:
    user = f"l-{uuid.uuid4().hex[:6]}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "clarion", "listen", pod.ws_url, "--token", token(user), "-v"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None and proc.stdout is not None
        wait_for_sync(lambda: "connected to pod" in proc.stderr.readline(), 15, 0)
        r = run_cli("publish", "--url", pod.http_url, "--user", user, '{"n": 1}', env=keys())
        assert r.returncode == 0, r.stderr
        frame = orjson.loads(proc.stdout.readline())
        assert frame["id"] == r.stdout.strip() and frame["data"] == {"n": 1}
        assert frame["type"] == "message" and frame["target"] == {"user": user}
    finally:
        proc.kill()
        proc.wait()
