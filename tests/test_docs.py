"""The README's configuration table matches the command line, flag for flag."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from clarion.cli import build_parser

README = Path(__file__).resolve().parent.parent / "README.md"


def _serve_flags() -> dict[str, str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    serve = sub.choices["serve"]
    flags = {}
    for action in serve._actions:
        if action.option_strings and action.dest != "help":
            flag = action.option_strings[0]
            env = "CLARION_" + (
                "API_KEYS" if flag == "--api-key" else flag[2:].upper().replace("-", "_")
            )
            flags[flag] = env
    return flags


def test_every_serve_flag_and_env_var_is_in_the_readme_table() -> None:
    text = README.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| `--")]
    documented = {re.match(r"\| `(--[a-z-]+)`", row).group(1): row for row in rows}  # type: ignore[union-attr]
    flags = _serve_flags()
    assert set(flags) == set(documented), (
        f"missing: {set(flags) - set(documented)}, stale: {set(documented) - set(flags)}"
    )
    for flag, env in flags.items():
        assert f"`{env}`" in documented[flag], f"{flag}: env var {env} not in its row"


def test_readme_starts_with_the_two_commands() -> None:
    head = README.read_text()[:800]
    assert "make run" in head and "make test" in head
    makefile = (README.parent / "Makefile").read_text()
    assert re.search(r"^run:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    ci = (README.parent / ".ci" / "run").read_text()
    assert "make test" in ci
