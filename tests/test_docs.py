"""The README says what the code does: its configuration table, its two commands."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from clarion import config, disconnects
from clarion.cli import build_parser

README = Path(__file__).resolve().parent.parent / "README.md"


def test_the_readme_configuration_table_is_the_declared_settings() -> None:
    """Every setting is declared once (config.py); the README shows those declarations."""
    table = config.markdown_table()
    assert table in README.read_text(), (
        "README's configuration table differs from the declarations; regenerate it with\n"
        "python -c 'from clarion import config; print(config.markdown_table())'"
    )


def test_the_readme_close_code_table_is_the_disconnect_table() -> None:
    assert disconnects.markdown_table() in README.read_text(), (
        "README's close codes differ from disconnects.py; regenerate with\n"
        "python -c 'from clarion import disconnects; print(disconnects.markdown_table())'"
    )


def test_every_declared_setting_is_a_serve_flag_and_reads_its_env_var() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    serve = sub.choices["serve"]
    flags = {a.option_strings[0]: a for a in serve._actions if a.option_strings}
    for opt in config.options():
        assert opt.flag in flags, opt.flag
        assert opt.env in flags[opt.flag].help, (opt.flag, opt.env)


def test_readme_starts_with_the_two_commands() -> None:
    head = README.read_text()[:800]
    assert "make run" in head and "make test" in head
    makefile = (README.parent / "Makefile").read_text()
    assert re.search(r"^run:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    ci = (README.parent / ".ci" / "run").read_text()
    assert "make test" in ci
