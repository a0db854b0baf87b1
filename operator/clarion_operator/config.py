"""The operator's own settings (not kopf's), each read from its ``CLARION_OPERATOR_*`` variable.

``clarion-operator``'s flags take their defaults from here (a flag on the
command line wins); under ``kopf run -m clarion_operator`` the variables are
all there is. They are read by the gateway's parser (``clarion.envvars``), so a
value that cannot be read stops the operator with an error naming the
variable, as it stops a gateway pod: ``CLARION_OPERATOR_STANDALONE=ture`` is
not read as false.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from clarion import envvars

ENV_PREFIX = "CLARION_OPERATOR_"

T = TypeVar("T")


def env_var(name: str) -> str:
    """``env_var("metrics-port")`` is ``CLARION_OPERATOR_METRICS_PORT``."""
    return envvars.env_name(ENV_PREFIX, name)


@dataclass(frozen=True)
class OperatorConfig:
    #: Watch only these namespaces (none: all of them).
    namespaces: tuple[str, ...] = ()
    all_namespaces: bool = False
    peering: str = "clarion"
    standalone: bool = False
    #: Peering priority; None: a random one, so two replicas (almost) never tie.
    priority: int | None = None
    liveness_port: int = 8080
    metrics_port: int = 9090
    verbose: bool = False
    #: Timeout for one pod's /metrics or /admin/shed request.
    pod_timeout: float = 3.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OperatorConfig:
        """The settings from the environment; raises ``envvars.EnvError`` on a bad value."""
        env = os.environ if environ is None else environ
        d = cls()

        def read(name: str, parse: Callable[[str], T], default: T) -> T:
            return envvars.read(env, env_var(name), parse, default)

        return cls(
            namespaces=tuple(read("namespace", envvars.parse_list, list(d.namespaces))),
            all_namespaces=read("all-namespaces", envvars.parse_bool, d.all_namespaces),
            peering=read("peering", str, d.peering),
            standalone=read("standalone", envvars.parse_bool, d.standalone),
            priority=read("priority", int, d.priority),
            liveness_port=read("liveness-port", int, d.liveness_port),
            metrics_port=read("metrics-port", int, d.metrics_port),
            verbose=read("verbose", envvars.parse_bool, d.verbose),
        )
