"""Reading settings from the environment: one parser for the gateway and the operator.

A value that cannot be read is an error naming the variable, never a silent
default: ``CLARION_COMPRESSION=ture`` stops the pod at start-up instead of
running it with compression off.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


class EnvError(ValueError):
    """An environment variable holds a value its setting cannot take."""


def parse_bool(raw: str) -> bool:
    v = raw.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise ValueError(f"not a boolean (use true/false, 1/0, yes/no, on/off): {raw!r}")


def parse_list(raw: str) -> list[str]:
    """A comma-separated list; blanks around and between items are dropped."""
    return [v.strip() for v in raw.split(",") if v.strip()]


def env_name(prefix: str, name: str) -> str:
    """``env_name("CLARION_", "max-connections")`` is ``CLARION_MAX_CONNECTIONS``."""
    return prefix + name.upper().replace("-", "_")


def read(environ: Mapping[str, str], var: str, parse: Callable[[str], T], default: T) -> T:
    """The parsed value of ``var``, or ``default`` when it is unset."""
    raw = environ.get(var)
    if raw is None:
        return default
    try:
        return parse(raw)
    except (ValueError, TypeError) as exc:
        raise EnvError(f"bad value for {var}: {exc}") from None


def describe(value: Any) -> str:
    """A default as the docs and ``--help`` show it."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return ",".join(value) if value else "none"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
