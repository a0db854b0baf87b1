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

from clarion import envvars, names
from clarion_operator.__main__ import build_parser
from clarion_operator.config import OperatorConfig
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


BOOLEANS = [
    "CLARION_OPERATOR_STANDALONE",
    "CLARION_OPERATOR_ALL_NAMESPACES",
    "CLARION_OPERATOR_VERBOSE",
]


@pytest.mark.parametrize("var", BOOLEANS)
@pytest.mark.parametrize(
    ("raw", "value"),
    [
        *[("1", True), ("true", True), ("TRUE", True), (" yes ", True), ("On", True)],
        *[("0", False), ("false", False), ("False", False), (" no", False), ("off", False)],
        ("", False),  # set but empty: off, as for the gateway's variables
    ],
)
def test_booleans_read_as_the_gateway_reads_them(var: str, raw: str, value: bool) -> None:
    config = OperatorConfig.from_env({var: raw})
    assert {
        "CLARION_OPERATOR_STANDALONE": config.standalone,
        "CLARION_OPERATOR_ALL_NAMESPACES": config.all_namespaces,
        "CLARION_OPERATOR_VERBOSE": config.verbose,
    }[var] is value


@pytest.mark.parametrize(
    ("var", "raw"),
    [
        *[(var, raw) for var in BOOLEANS for raw in ("ture", "2", "-1", "yes please", "t")],
        ("CLARION_OPERATOR_METRICS_PORT", "nine"),
        ("CLARION_OPERATOR_METRICS_PORT", "90.5"),
        ("CLARION_OPERATOR_METRICS_PORT", ""),
        ("CLARION_OPERATOR_LIVENESS_PORT", "8080x"),
        ("CLARION_OPERATOR_PRIORITY", "high"),
    ],
)
def test_a_bad_variable_is_an_error_naming_it(
    monkeypatch: pytest.MonkeyPatch, var: str, raw: str
) -> None:
    with pytest.raises(envvars.EnvError, match=var):
        OperatorConfig.from_env({var: raw})
    monkeypatch.setenv(var, raw)
    with pytest.raises(envvars.EnvError, match=var):
        build_parser()


KOPF_RUN = ["-c", "import kopf.cli; kopf.cli.main()", "run", "--standalone", "-A"]


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("argv", "code"),
    [(["-m", "clarion_operator", "--standalone"], 2), ([*KOPF_RUN, "-m", "clarion_operator"], 1)],
    ids=["clarion-operator", "kopf-run"],
)
def test_both_entry_points_refuse_a_bad_variable(argv: list[str], code: int) -> None:
    """Before any Kubernetes call: the process stops, naming the variable and the value."""
    proc = subprocess.run(
        [sys.executable, *argv],
        env={**os.environ, "CLARION_OPERATOR_VERBOSE": "ture", "KUBECONFIG": "/nonexistent"},
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert proc.returncode == code, proc.stderr[-2000:]
    assert "bad value for CLARION_OPERATOR_VERBOSE" in proc.stderr and "'ture'" in proc.stderr


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
