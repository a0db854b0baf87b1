"""The real images, built by ``scripts/images.sh`` and run with podman on the host network.

The first run of a machine installs podman and builds the Python base image (about 2
minutes); afterwards podman's layer cache makes the build a few seconds, so the tests
always run the images of the code in the tree.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from clarion_operator import resources
from clarion_operator.spec import GatewaySpec
from tests.support import REPO, Vhost

from .podman import Containers, podman

GATEWAY_IMAGE = os.environ.get("CLARION_IMAGE", "localhost/clarion:test")
OPERATOR_IMAGE = os.environ.get("CLARION_OPERATOR_IMAGE", "localhost/clarion-operator:test")
MiB = 1024 * 1024
#: (what, value) lines for the summary at the end of the run.
REPORT: list[tuple[str, str]] = []


@dataclass(frozen=True)
class Images:
    gateway: str
    operator: str
    build_seconds: float

    def size(self, image: str) -> int:
        return int(podman("image", "inspect", "--format", "{{.Size}}", image))

    def user(self, image: str) -> str:
        return podman("image", "inspect", "--format", "{{.Config.User}}", image)


def podman_works() -> bool:
    if shutil.which("podman") is None:
        return False
    return subprocess.run(["podman", "info"], capture_output=True, timeout=60).returncode == 0


@pytest.fixture(scope="session")
def images() -> Images:
    """Both images, freshly built; skipped (not in CI) only where podman cannot run."""
    started = time.monotonic()
    r = subprocess.run(
        [str(REPO / "scripts" / "images.sh")],
        capture_output=True,
        text=True,
        timeout=1200,
        env={
            **os.environ,
            "CLARION_IMAGE": GATEWAY_IMAGE,
            "CLARION_OPERATOR_IMAGE": OPERATOR_IMAGE,
        },
    )
    seconds = time.monotonic() - started
    if r.returncode != 0:
        why = f"scripts/images.sh failed ({r.returncode}): {(r.stdout + r.stderr)[-3000:]}"
        if os.environ.get("CI") == "true" or podman_works():
            pytest.fail(why)  # CI's machine kind runs podman; a failed build is a real failure
        pytest.skip(f"podman cannot be installed or run here: {why}")
    REPORT.append(("scripts/images.sh", f"{seconds:.1f} s"))
    return Images(GATEWAY_IMAGE, OPERATOR_IMAGE, seconds)


@pytest.fixture
def containers(images: Images) -> Iterator[Containers]:
    """Containers of one test, removed (podman rm -f) however the test ends."""
    c = Containers()
    try:
        yield c
    finally:
        c.remove_all()


@dataclass
class Gateway:
    """One WebSocketGateway as the operator would deploy it, and the Secrets it names."""

    deployment: dict[str, Any]
    secrets: dict[tuple[str, str], str]
    jwt_secret: str
    api_key: str


@pytest.fixture
def gateway(images: Images, vhost: Vhost) -> Gateway:
    """The operator's Deployment for a default JWT gateway, with Secrets on a fresh vhost."""
    spec = GatewaySpec.parse({"image": images.gateway})
    owner = {"metadata": {"name": "gw", "namespace": "images", "uid": "u-images"}}
    dep = resources.deployment("gw", "images", spec, owner, replicas=2)
    jwt_secret, api_key = secrets.token_urlsafe(32), secrets.token_urlsafe(16)
    auth, broker = spec.auth, spec.broker
    values = {
        broker.url_secret_ref: vhost.amqp_url,
        auth.jwt_secret_ref: jwt_secret,
        # Two keys, as during a rotation; the test publishes with the second.
        auth.api_key_secret_ref: f"{secrets.token_urlsafe(16)},{api_key}",
        auth.admin_token_secret_ref: secrets.token_urlsafe(16),
    }
    return Gateway(dep, {(r.name, r.key): v for r, v in values.items()}, jwt_secret, api_key)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if REPORT:
        terminalreporter.section("images")
        for what, value in REPORT:
            terminalreporter.write_line(f"{what}: {value}")
