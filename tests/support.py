"""Helpers that start real components for the tests: gateway pods (processes or
in-process), vhosts."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import httpx
import uvicorn
import uvloop

from clarion.config import Settings
from clarion.gateway import Gateway
from clarion.server import uvicorn_config
from testkit import rabbitmq
from testkit.net import free_port

#: The shared RabbitMQ node (``CLARION_TEST_RABBIT_HOST``, ``_PORT``, ``CLARION_TEST_MGMT_URL``).
RABBIT = rabbitmq.Rabbit.from_env("CLARION_TEST_")
MGMT_URL = RABBIT.mgmt_url
MGMT_AUTH = RABBIT.auth

T = TypeVar("T")

#: Debian's chromium (scripts/services.sh installs it); Playwright drives it.
CHROMIUM = os.environ.get("CLARION_TEST_CHROMIUM", "/usr/bin/chromium")
#: As root it needs --no-sandbox; the rest keep it off the (closed) network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


async def wait_for(
    predicate: Callable[[], Awaitable[T] | T],
    timeout: float = 10.0,
    interval: float = 0.05,
    message: str = "condition",
) -> T:
    """Poll until ``predicate`` returns a truthy value; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while True:
        try:
            value = predicate()
            if asyncio.iscoroutine(value) or isinstance(value, Awaitable):
                value = await value  # type: ignore[misc]
            if value:
                return value  # type: ignore[return-value]
        except Exception as exc:  # keep polling through transient errors
            last_exc = exc
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {message}"
                + (f" (last error: {last_exc!r})" if last_exc else "")
            )
        await asyncio.sleep(interval)


def wait_for_sync(
    predicate: Callable[[], Any],
    timeout: float = 10.0,
    interval: float = 0.05,
    message: str = "condition",
) -> Any:
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:
            last_exc = exc
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {message}"
                + (f" (last error: {last_exc!r})" if last_exc else "")
            )
        time.sleep(interval)


class Vhost(rabbitmq.Vhost):
    """A RabbitMQ vhost of one test (module), so tests never see each other's queues."""

    rabbit = RABBIT
    prefix = "clarion-test"


REPO = Path(__file__).resolve().parent.parent


class Pod:
    """What a test sees of any pod: its addresses and its /metrics."""

    pod_name: str
    host: str
    port: int

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/ws"

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        """The value of one sample on /metrics (0 if absent)."""
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(f"{self.http_url}/metrics", timeout=5).text
        total = 0.0
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in (labels or {}).items()):
                    total += s.value
        return total


class GatewayProcess(Pod):
    """A real ``clarion serve`` process (one 'pod') on a loopback address."""

    def __init__(
        self,
        pod_name: str,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        amqp_url: str | None = None,
        args: list[str] | None = None,
        env: dict[str, str] | None = None,
        log_dir: Path | None = None,
        routing: str | None = None,
    ) -> None:
        self.pod_name = pod_name
        self.host = host
        self.port = port or free_port(host)
        self.amqp_url = amqp_url
        self.args = args if args is not None else ["--auth", "none"]
        self.env = dict(env or {})
        if routing is not None:
            self.env["CLARION_ROUTING"] = routing
        self.log_path = (log_dir or Path("/tmp")) / f"gateway-{pod_name}-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> GatewayProcess:
        cmd = [
            sys.executable,
            "-m",
            "clarion",
            "serve",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--pod-name",
            self.pod_name,
            "--log-level",
            "info",
            *self.args,
        ]
        if self.amqp_url:
            cmd += ["--amqp-url", self.amqp_url]
        env = {k: v for k, v in os.environ.items() if not k.startswith("CLARION_")}
        env.update(self.env)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        return self

    def ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(
                f"gateway {self.pod_name} exited {self.proc.returncode}: " + self.log()
            )
        try:
            return httpx.get(f"{self.http_url}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, timeout: float = 20.0) -> GatewayProcess:
        wait_for_sync(self.ready, timeout, 0.1, f"gateway {self.pod_name} ready")
        return self

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        if self.proc is not None:
            self._log.close()


class InProcessPod(Pod):
    """A real pod inside the test process, for tests that need no second process.

    The real app (``clarion.app.create_app``) with Clarion's own uvicorn settings
    (``clarion.server.uvicorn_config``) under a real uvicorn, on an event loop of
    its own in a thread, listening on a free loopback port; the embedded broker
    unless ``amqp_url`` is given. Clients reach it over real TCP as they reach
    ``clarion serve`` (uvicorn's fast path included), but it starts in
    milliseconds. ``env`` holds ``CLARION_*`` variables, read as ``serve`` reads
    them; keyword settings win over them, as flags do.
    """

    def __init__(
        self,
        pod_name: str | None = None,
        *,
        host: str = "127.0.0.1",
        env: Mapping[str, str] | None = None,
        **settings: Any,
    ) -> None:
        self.pod_name = pod_name or f"inproc-{uuid.uuid4().hex[:6]}"
        self.host = host
        self.port = free_port(host)
        self.settings = Settings.from_env(
            env or {}, pod_name=self.pod_name, host=host, port=self.port, **settings
        )
        self.gateway = Gateway(self.settings)
        # uvicorn leaves the signals alone off the main thread: stop() stops it.
        self._server = uvicorn.Server(uvicorn_config(self.gateway))
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def start(self, timeout: float = 10.0) -> InProcessPod:
        self._thread = threading.Thread(target=self._run, name=self.pod_name, daemon=True)
        self._thread.start()
        wait_for_sync(self.ready, timeout, 0.01, f"in-process pod {self.pod_name} ready")
        return self

    def _run(self) -> None:
        try:
            uvloop.run(self._server.serve())
        except BaseException as exc:  # SystemExit when uvicorn cannot start
            self._error = exc

    def ready(self) -> bool:
        if self._thread is not None and not self._thread.is_alive():
            raise RuntimeError(f"in-process pod {self.pod_name} stopped: {self._error!r}")
        return self._server.started and self.gateway.ready

    def stop(self, timeout: float = 10.0) -> None:
        """Shut down as on Ctrl-C: sockets closed, the broker stopped, the port freed."""
        if self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(5)
        self._thread = None

    def __enter__(self) -> InProcessPod:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> InProcessPod:
        return await asyncio.to_thread(self.start)

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)


@contextlib.contextmanager
def started(
    pods: list[GatewayProcess], timeout: float = 20.0, *, kill: bool = False
) -> Iterator[list[GatewayProcess]]:
    """Start ``pods`` together, return once every one is ready, stop them all on exit
    (``kill``: SIGKILL instead of a clean stop). For scripts (bench/); a test takes its
    pods from ``pod_factory``."""
    try:
        yield PodFactory.start(pods, timeout)
    finally:
        for p in pods:
            if kill:
                p.kill()
            else:
                p.stop()


def loopbacks(first: int, count: int) -> list[str]:
    """``count`` loopback addresses from 127.0.0.<first>: pods with addresses of their own
    (``pod_factory(..., hosts=loopbacks(10, 3))``), as pods with their own IPs have."""
    return [f"127.0.0.{first + i}" for i in range(count)]


class Pods(list[GatewayProcess]):
    """Pods a ``PodFactory`` made: a list, and a context that SIGKILLs them on exit
    (for a fixture whose pods must go before the factory's teardown)."""

    def __enter__(self) -> Pods:
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self:
            p.kill()


class PodFactory:
    """Starts real ``clarion serve`` processes for a test and ends them after it.

    What the ``pod_factory`` fixtures (tests/conftest.py) hand a test, as Starlette's
    ``test_client_factory`` hands out clients: call it with the pods a test needs::

        a, b = pod_factory(2, amqp_url=vhost.amqp_url, routing=routing)

    The pods are ready when the call returns (``start=False``: made, not started,
    for a test that starts them itself); whatever it made is SIGKILLed at teardown
    (or earlier: ``with pod_factory(...) as pods:``), and the logs of every pod are
    shown with a failing test (tests/conftest.py).
    """

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.pods: list[GatewayProcess] = []

    def __call__(
        self,
        count: int = 1,
        prefix: str = "pod",
        *,
        names: list[str] | None = None,
        amqp_url: str | None = None,
        args: list[str] | None = None,
        routing: str | None = None,
        env: dict[str, str] | None = None,
        hosts: list[str] | None = None,
        port: int | None = None,
        start: bool = True,
        timeout: float = 20.0,
    ) -> Pods:
        """``count`` pods named ``<prefix>-<i>-<random>`` (or one per name of ``names``),
        with ``args`` (default ``--auth none``) on ``amqp_url`` (default: the embedded
        broker); pod ``i`` listens on ``hosts[i]`` (default 127.0.0.1), on ``port`` if
        given."""
        names = names or [f"{prefix}-{i}-{uuid.uuid4().hex[:6]}" for i in range(count)]
        made = Pods(
            GatewayProcess(
                name,
                host=hosts[i] if hosts else "127.0.0.1",
                port=port,
                amqp_url=amqp_url,
                args=args,
                env=env,
                log_dir=self.log_dir,
                routing=routing,
            )
            for i, name in enumerate(names)
        )
        self.pods += made
        return self.start(made, timeout) if start else made

    @staticmethod
    def start(pods: list[GatewayProcess], timeout: float = 20.0) -> Pods:
        """Start pods made with ``start=False`` together; return once every one is ready
        (as a ``Pods``: ``with pod_factory.start(made[:2]):`` kills those two on exit)."""
        pods = Pods(pods)
        for p in pods:
            p.start()
        for p in pods:
            p.wait_ready(timeout)
        return pods

    def logs(self) -> list[tuple[str, str]]:
        """(title, last lines of the log) of every pod this factory started."""
        return [(f"gateway {p.pod_name}", p.log()) for p in self.pods if p.proc is not None]

    def close(self) -> None:
        for p in self.pods:
            p.kill()
