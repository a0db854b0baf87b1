"""The operator's settings are declared once: each has a variable and a flag, derived."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from clarion import envvars
from clarion_operator.__main__ import build_parser
from clarion_operator.config import OperatorConfig, Option, declared, markdown_table
from tests.support import REPO

#: Fields of OperatorConfig that are not settings (no flag, no variable).
INTERNAL = {"pod_timeout"}

SETTINGS = [opt for opt, _ in declared()]


def sample(opt: Option) -> tuple[str, list[str], Any]:
    """A value other than the default: as a variable, as flags, and as read."""
    if opt.is_bool:
        return "true", [opt.flag], True
    if opt.repeats:
        return "a,b", [opt.flag, "a", opt.flag, "b"], ("a", "b")
    if opt.parse is int:
        return "7", [opt.flag, "7"], 7
    return "x", [opt.flag, "x"], "x"


def test_every_field_is_a_declared_setting_or_internal() -> None:
    fields = {f.name for f in dataclasses.fields(OperatorConfig)}
    assert fields - INTERNAL == {f.name for _, f in declared()}
    assert len(SETTINGS) == 8
    assert len({o.env for o in SETTINGS}) == len({o.flag for o in SETTINGS}) == 8


@pytest.mark.parametrize("opt", SETTINGS, ids=lambda o: o.name)
def test_each_setting_is_read_from_its_variable(opt: Option) -> None:
    raw, _, value = sample(opt)
    name = next(f.name for o, f in declared() if o is opt)
    assert opt.env == "CLARION_OPERATOR_" + opt.name.upper().replace("-", "_")
    config = OperatorConfig.from_env({opt.env: raw})
    assert getattr(config, name) == value
    assert getattr(OperatorConfig.from_env({}), name) != value
    # a value the parser refuses names the variable
    if opt.parse is not str and not opt.repeats:
        with pytest.raises(envvars.EnvError, match=opt.env):
            OperatorConfig.from_env({opt.env: "not-a-value"})


@pytest.mark.parametrize("opt", SETTINGS, ids=lambda o: o.name)
def test_each_setting_has_a_flag_that_wins_over_its_variable(
    opt: Option, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw, argv, value = sample(opt)
    name = next(f.name for o, f in declared() if o is opt)
    defaults = OperatorConfig.from_env({})
    parser = build_parser(defaults)
    assert opt.flag in parser.format_help() and opt.env in parser.format_help()
    assert getattr(defaults.from_args(parser.parse_args(argv)), name) == value
    assert defaults.from_args(parser.parse_args([])) == defaults
    if opt.short:
        short_argv = [opt.short if a == opt.flag else a for a in argv]
        assert getattr(defaults.from_args(parser.parse_args(short_argv)), name) == value
    if not (opt.is_bool or opt.repeats):
        # the variable gives the default, the flag wins
        monkeypatch.setenv(opt.env, raw)
        from_env = build_parser()
        assert getattr(OperatorConfig.from_env().from_args(from_env.parse_args([])), name) == value
        other = [argv[0], "8" if opt.parse is int else "y"]
        got = getattr(OperatorConfig.from_env().from_args(from_env.parse_args(other)), name)
        assert got == opt.parse(other[1])


@pytest.mark.parametrize(
    "argv",
    [
        ["--standalone", "--peering", "x"],
        ["-n", "a", "-A"],
        ["--all-namespaces", "--namespace", "b"],
    ],
)
def test_settings_of_one_group_exclude_each_other(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser(OperatorConfig()).parse_args(argv)


def test_the_docs_table_is_the_declared_settings() -> None:
    assert markdown_table() in (REPO / "docs" / "operator.md").read_text(), (
        "docs/operator.md's settings table differs from the declarations; regenerate it with\n"
        "python -c 'from clarion_operator import config; print(config.markdown_table())'"
    )
