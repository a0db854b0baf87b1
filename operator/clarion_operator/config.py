"""The operator's own settings (not kopf's), each declared once.

Each field of ``OperatorConfig`` that is a setting carries its flag, its type (the
parser), its default and its help, as the gateway's settings do in
``clarion.config``; its ``CLARION_OPERATOR_*`` variable is named after the flag.
The environment reading (``OperatorConfig.from_env``), ``clarion-operator``'s
flags (``build_parser``: a flag on the command line wins over the variable) and
the settings from parsed flags (``from_args``) are all derived from them. Under
``kopf run -m clarion_operator`` the variables are all there is. They are read by
the gateway's parser (``clarion.envvars``), so a value that cannot be read stops
the operator with an error naming the variable, as it stops a gateway pod:
``CLARION_OPERATOR_STANDALONE=ture`` is not read as false.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from clarion import envvars

ENV_PREFIX = "CLARION_OPERATOR_"


def env_var(name: str) -> str:
    """``env_var("metrics-port")`` is ``CLARION_OPERATOR_METRICS_PORT``."""
    return envvars.env_name(ENV_PREFIX, name)


@dataclass(frozen=True)
class Option:
    """How one operator setting appears outside the code."""

    #: The flag without its dashes; the variable is named after it.
    name: str
    help: str
    parse: Callable[[str], Any]
    #: A one-letter alias (``-n``).
    short: str | None = None
    #: Settings of one group exclude each other on the command line.
    group: str | None = None
    #: What the help says of the default when the value alone does not say it.
    doc_default: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name

    @property
    def env(self) -> str:
        return env_var(self.name)

    @property
    def dest(self) -> str:
        """The attribute argparse gives the flag's value."""
        return self.name.replace("-", "_")

    @property
    def is_bool(self) -> bool:
        return self.parse is envvars.parse_bool

    @property
    def repeats(self) -> bool:
        return self.parse is _parse_names


def _parse_names(raw: str) -> tuple[str, ...]:
    return tuple(envvars.parse_list(raw))


def setting(
    default: Any, name: str, help: str, parse: Callable[[str], Any] = str, **kw: Any
) -> Any:
    """An ``OperatorConfig`` field that is a setting (see ``Option``)."""
    return field(default=default, metadata={"operator": Option(name, help, parse, **kw)})


@dataclass(frozen=True)
class OperatorConfig:
    namespaces: tuple[str, ...] = setting(
        (),
        "namespace",
        "watch this namespace",
        _parse_names,
        short="-n",
        group="scope",
        doc_default="none: every namespace",
    )
    all_namespaces: bool = setting(
        False,
        "all-namespaces",
        "watch every namespace (the default)",
        envvars.parse_bool,
        short="-A",
        group="scope",
        doc_default="off (every namespace is watched when none is named)",
    )
    peering: str = setting(
        "clarion",
        "peering",
        "kopf peering object: of several replicas only the highest priority works",
        group="peering",
    )
    standalone: bool = setting(
        False,
        "standalone",
        "no peering: this must be the only replica",
        envvars.parse_bool,
        group="peering",
    )
    #: None: a random one, so two replicas (almost) never tie.
    priority: int | None = setting(
        None,
        "priority",
        "peering priority (so two replicas never tie)",
        int,
        doc_default="random 1-10000",
    )
    liveness_port: int = setting(
        8080, "liveness-port", "kopf's liveness endpoint at /healthz; 0: off", int
    )
    metrics_port: int = setting(9090, "metrics-port", "operator metrics at /metrics; 0: off", int)
    verbose: bool = setting(False, "verbose", "debug logging", envvars.parse_bool, short="-v")
    #: Timeout for one pod's /metrics or /admin/shed request (not a setting).
    pod_timeout: float = 3.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OperatorConfig:
        """The settings from the environment; raises ``envvars.EnvError`` on a bad value."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {
            f.name: envvars.read(env, o.env, o.parse, f.default) for o, f in declared()
        }
        return cls(**values)

    def from_args(self, args: argparse.Namespace) -> OperatorConfig:
        """These settings with the flags' values (``build_parser``'s) in place."""
        values = {f.name: getattr(args, o.dest) for o, f in declared()}
        values.update({f.name: tuple(values[f.name]) for o, f in declared() if o.repeats})
        return dataclasses.replace(self, **values)


def declared() -> Iterator[tuple[Option, dataclasses.Field[Any]]]:
    """Every declared setting, in declaration order."""
    for f in dataclasses.fields(OperatorConfig):
        opt = f.metadata.get("operator")
        if opt is not None:
            yield opt, f


def build_parser(defaults: OperatorConfig, **kw: Any) -> argparse.ArgumentParser:
    """The flags of every declared setting, defaulting to ``defaults``."""
    p = argparse.ArgumentParser(**kw)
    groups: dict[str, Any] = {}
    for opt, f in declared():
        value = getattr(defaults, f.name)
        where: Any = p
        if opt.group is not None:
            if opt.group not in groups:
                groups[opt.group] = p.add_mutually_exclusive_group()
            where = groups[opt.group]
        names = [opt.flag, *([opt.short] if opt.short else [])]
        where.add_argument(*names, help=_help(opt, f.default), **_kind(opt, value))
    return p


def markdown_table() -> str:
    """docs/operator.md's table of the settings, as the declarations say it."""
    rows = ["| flag | env var | default | meaning |", "|---|---|---|---|"]
    for opt, f in declared():
        flag = f"`{opt.flag}`" + (f", `{opt.short}`" if opt.short else "")
        flag += " (repeatable)" if opt.repeats else ""
        env = f"`{opt.env}`" + (" (comma-separated)" if opt.repeats else "")
        default = opt.doc_default or f"`{envvars.describe(f.default)}`"
        rows.append(f"| {flag} | {env} | {default} | {opt.help} |")
    return "\n".join(rows)


def _kind(opt: Option, value: Any) -> dict[str, Any]:
    if opt.is_bool:
        return {"action": "store_true", "default": value}
    if opt.repeats:
        return {"action": "append", "default": list(value)}
    return {"type": opt.parse, "default": value}


def _help(opt: Option, default: Any) -> str:
    env = opt.env + (", comma-separated" if opt.repeats else "")
    what = opt.help + (" (repeatable)" if opt.repeats else "")
    if opt.doc_default is not None:
        shown = opt.doc_default
    elif opt.is_bool or default is None:
        shown = None
    else:
        shown = repr(default) if isinstance(default, str) else str(default)
    return f"{what} [env {env}" + (f", default {shown}" if shown else "") + "]"
