"""``clarion-operator``: flags and env, and a real process serving liveness and metrics."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from clarion import names
from clarion_operator.__main__ import build_parser
from tests.support import free_port, wait_for

from .conftest import Cluster


def test_flags_default_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    args = build_parser().parse_args([])
    assert (args.peering, args.standalone, args.liveness_port, args.metrics_port) == (
        "clarion",
        False,
        8080,
        9090,
    )
    monkeypatch.setenv("CLARION_OPERATOR_NAMESPACE", "a,b")
    monkeypatch.setenv("CLARION_OPERATOR_STANDALONE", "true")
    monkeypatch.setenv("CLARION_OPERATOR_METRICS_PORT", "9999")
    args = build_parser().parse_args(["--liveness-port", "1"])
    assert args.namespace == ["a", "b"] and args.standalone and args.metrics_port == 9999
    assert args.liveness_port == 1
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--standalone", "--peering", "x"])


@pytest.mark.timeout(40)
async def test_the_console_script_runs_the_operator(cluster: Cluster, tmp_path: Path) -> None:
    live, metrics = free_port(), free_port()
    log = open(tmp_path / "operator.log", "wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "clarion_operator",
            "--standalone",
            "--all-namespaces",
            f"--liveness-port={live}",
            f"--metrics-port={metrics}",
        ],
        env={**os.environ, "KUBECONFIG": os.environ["KUBECONFIG"]},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        async with httpx.AsyncClient(timeout=2) as http:

            async def up(url: str) -> bool:
                return (await http.get(url)).status_code == 200

            await wait_for(
                lambda: up(f"http://127.0.0.1:{live}/healthz"), 20, 0.1, message="liveness"
            )
            text = (await http.get(f"http://127.0.0.1:{metrics}/metrics")).text
            assert names.M_OP_DESIRED in text and names.M_OP_ORPHANS_DELETED in text
        await wait_for(lambda: cluster.watching(names.CRD_PLURAL), 20, message="watching")
        await cluster.gateway("gw")
        await wait_for(lambda: cluster.get("apps/v1/deployments", "gw"), 20, message="Deployment")
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 20)
        log.close()
    assert code == 0, (tmp_path / "operator.log").read_text()[-3000:]
