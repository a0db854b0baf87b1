"""Settings are declared once; the flags and the environment read them the same way."""

from __future__ import annotations

import subprocess
import sys

import pytest

from clarion import config, envvars
from clarion.cli import _settings, build_parser
from clarion.config import Settings

pytestmark = pytest.mark.timeout(30)


def serve_settings(argv: list[str], environ: dict[str, str]) -> Settings:
    args = build_parser().parse_args(["serve", *argv])
    import os

    saved = dict(os.environ)
    try:
        os.environ.clear()
        os.environ.update(environ)
        return _settings(args, dev=False)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_defaults_are_the_declared_ones() -> None:
    s = serve_settings([], {})
    for opt in config.options():
        if opt.name != "pod_name":
            assert getattr(s, opt.name) == config.default_of(opt.name), opt.name


def test_a_flag_wins_over_its_variable_and_the_variable_over_the_default() -> None:
    env = {"CLARION_MAX_CONNECTIONS": "7", "CLARION_DRAIN_WINDOW": "2.5"}
    s = serve_settings(["--max-connections", "9"], env)
    assert s.max_connections == 9 and s.drain_window == 2.5


def test_lists_and_repeatable_flags() -> None:
    s = serve_settings([], {"CLARION_API_KEYS": " k1, ,k2 ", "CLARION_ALLOWED_ORIGINS": "a,b"})
    assert s.api_keys == ["k1", "k2"] and s.allowed_origins == ["a", "b"]
    s = serve_settings(["--api-key", "x", "--api-key", "y"], {"CLARION_API_KEYS": "k1"})
    assert s.api_keys == ["x", "y"]


@pytest.mark.parametrize("raw", ["1", "true", "TRUE", " yes ", "on"])
def test_true_booleans(raw: str) -> None:
    assert serve_settings([], {"CLARION_COMPRESSION": raw}).compression is True


@pytest.mark.parametrize("raw", ["0", "false", "False", "no", "off", ""])
def test_false_booleans(raw: str) -> None:
    assert serve_settings([], {"CLARION_DEMO": raw}).demo is False


@pytest.mark.parametrize(
    ("var", "raw"),
    [
        ("CLARION_COMPRESSION", "ture"),
        ("CLARION_COMPRESSION", "2"),
        ("CLARION_MAX_CONNECTIONS", "lots"),
        ("CLARION_MAX_CONNECTIONS", "1.5"),
        ("CLARION_DRAIN_DELAY", "soon"),
        ("CLARION_AUTH", "basic"),
        ("CLARION_LOG_LEVEL", "loud"),
    ],
)
def test_a_bad_variable_is_an_error_naming_it(var: str, raw: str) -> None:
    with pytest.raises(envvars.EnvError, match=var):
        serve_settings([], {var: raw})


def test_serve_with_a_bad_variable_exits_2_with_the_reason() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "clarion", "serve", "--auth", "none"],
        env={"CLARION_COMPRESSION": "ture", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert proc.returncode == 2
    assert "CLARION_COMPRESSION" in proc.stderr and "ture" in proc.stderr


def test_help_never_shows_a_secret_from_the_environment() -> None:
    import os

    os.environ["CLARION_JWT_SECRET"] = "s3cret-value"
    try:
        text = build_parser()._subparsers._group_actions[0].choices["serve"].format_help()  # type: ignore[union-attr]
    finally:
        del os.environ["CLARION_JWT_SECRET"]
    assert "s3cret-value" not in text
