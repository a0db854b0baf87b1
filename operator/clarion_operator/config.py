"""The operator's own settings (not kopf's): where to serve metrics, how much to log.

``clarion-operator`` builds them from its flags and hands them to kopf in the
memo; under ``kopf run -m clarion_operator`` they come from the same
``CLARION_OPERATOR_*`` environment variables the flags read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

ENV_PREFIX = "CLARION_OPERATOR_"


def env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(ENV_PREFIX + name.upper().replace("-", "_"), default)


@dataclass(frozen=True)
class OperatorConfig:
    metrics_port: int = 9090
    #: Timeout for one pod's /metrics or /admin/shed request.
    pod_timeout: float = 3.0

    @classmethod
    def from_env(cls) -> OperatorConfig:
        return cls(metrics_port=int(env("metrics-port") or cls.metrics_port))
