"""Channel namespaces: ``<namespace>:<rest>`` picks the options of a kind of channel.

Declared once, as the ``--namespaces`` setting (a JSON object, namespace name to
options; ``""`` holds the options of plain names). Without it every channel is a
plain name, ``:`` included, as before namespaces existed. With it, a channel
with a ``:`` must name a declared namespace and something after the separator:
``orders:`` and ``nosuch:x`` are refused (``bad_channel``), never read as a
plain name, so one channel cannot mean two things.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any

import orjson

from .names import MAX_NAME_LENGTH, PATTERN_CHARS

SEPARATOR = ":"
#: How a subscription is decided: the connection's rights (then a subscription token or
#: the subscribe proxy for what they do not cover), always a token, always the proxy.
SUBSCRIBE_RULES = ("rights", "token", "proxy")
#: The ``reason`` of a ``recovered: false`` in a namespace that keeps no history.
HISTORY_OFF = "history_off"


@dataclass(frozen=True)
class Namespace:
    """One namespace's options (the defaults: what plain names get without ``--namespaces``)."""

    name: str = ""
    #: ``since`` recovery: off, a subscription with ``since`` recovers nothing and says so.
    history: bool = True
    #: How far back (seconds) ``since`` reaches here; 0: as far as the history does.
    history_seconds: float = 0.0
    #: Presence queries (``GET /api/presence``) about these channels.
    presence: bool = True
    #: ``join``/``leave`` frames; None: as ``--join-leave``.
    join_leave: bool | None = None
    #: Clients may publish here; None: as ``--allow-client-publish``.
    publish: bool | None = None
    subscribe: str = "rights"
    #: Frames per second one socket may send about these channels; 0: no limit of its own.
    rate: float = 0.0


_FLAGS = ("history", "presence", "join_leave", "publish")
_NUMBERS = ("history_seconds", "rate")
OPTIONS = tuple(f.name for f in dataclasses.fields(Namespace) if f.name != "name")


def _option(ns: str, key: str, value: Any) -> Any:
    where = f"--namespaces: namespace {ns!r}: option {key!r}"
    if key in _FLAGS:
        if not isinstance(value, bool) and not (key in ("join_leave", "publish") and value is None):
            raise ValueError(f"{where} must be true or false, not {orjson.dumps(value).decode()}")
        return value
    if key in _NUMBERS:
        if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
            raise ValueError(f"{where} must be a number >= 0, not {orjson.dumps(value).decode()}")
        return float(value)
    if value not in SUBSCRIBE_RULES:
        raise ValueError(f"{where} must be one of {', '.join(SUBSCRIBE_RULES)}, not {value!r}")
    return value


def _check_name(name: object) -> str:
    if not isinstance(name, str) or len(name) > MAX_NAME_LENGTH // 2:
        raise ValueError(f"--namespaces: {name!r} is not a namespace name")
    if name and (SEPARATOR in name or not PATTERN_CHARS.isdisjoint(name) or name != name.strip()):
        raise ValueError(
            f"--namespaces: namespace {name!r}: a name has no {SEPARATOR!r}, * ? [ ] or "
            "blanks around it"
        )
    return name


class Namespaces:
    """The declared namespaces; ``of(channel)`` is a channel's options."""

    def __init__(self, declared: dict[str, Namespace] | None = None) -> None:
        self.declared = dict(declared or {})
        self.plain = self.declared.pop("", Namespace())

    @classmethod
    def parse(cls, raw: str) -> Namespaces:
        """``--namespaces``: ``{"orders": {"history": false, "subscribe": "proxy"}, ...}``;
        ValueError naming the namespace and the option that is wrong."""
        if not raw.strip():
            return cls()
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"--namespaces is not JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise ValueError("--namespaces must be a JSON object: namespace name -> options")
        out: dict[str, Namespace] = {}
        for name, options in obj.items():
            name = _check_name(name)
            if not isinstance(options, dict):
                raise ValueError(f"--namespaces: namespace {name!r}: options must be an object")
            for key in options:
                if key not in OPTIONS:
                    raise ValueError(
                        f"--namespaces: namespace {name!r}: unknown option {key[:64]!r} "
                        f"(known: {', '.join(OPTIONS)})"
                    )
            values = {key: _option(name, key, value) for key, value in options.items()}
            out[name] = Namespace(name=name, **values)
        return cls(out)

    def of(self, channel: str) -> Namespace:
        name, sep, _ = channel.partition(SEPARATOR)
        if sep and self.declared:
            return self.declared.get(name, self.plain)
        return self.plain

    def refusal(self, channel: str) -> str | None:
        """Why ``channel`` is no channel here (an undeclared namespace, nothing after the
        separator), or None."""
        if not self.declared or SEPARATOR not in channel:
            return None
        name, _, rest = channel.partition(SEPARATOR)
        if name not in self.declared:
            known = ", ".join(sorted(self.declared))
            return f"unknown namespace {name[:64]!r} (declared: {known})"
        if not rest:
            return f"nothing after {name + SEPARATOR!r}: a channel is <namespace>:<name>"
        return None

    @staticmethod
    @functools.lru_cache(maxsize=8)
    def of_setting(raw: str) -> Namespaces:
        """The namespaces of a ``--namespaces`` value, parsed once (a pod's settings do not
        change; ``Settings.validate`` refused a bad value at start)."""
        return Namespaces.parse(raw)

    def join_leave(self, channel: str, default: bool) -> bool:
        """Whether ``channel``'s members get join/leave frames (``default``: ``--join-leave``)."""
        value = self.of(channel).join_leave
        return default if value is None else value

    def any_join_leave(self) -> bool:
        return any(ns.join_leave for ns in (self.plain, *self.declared.values()))

    def any_subscribe(self, rule: str) -> bool:
        return any(ns.subscribe == rule for ns in (self.plain, *self.declared.values()))
