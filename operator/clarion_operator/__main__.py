"""``clarion-operator``: run the operator in this process (kopf with Clarion's defaults).

Every flag is also an environment variable ``CLARION_OPERATOR_<FLAG>``
(``--metrics-port`` is ``CLARION_OPERATOR_METRICS_PORT``), read in
``config.py``; a flag on the command line wins. ``kopf run --standalone -A -m
clarion_operator`` runs the same handlers with kopf's own flags.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
from collections.abc import Sequence

from clarion import envvars

from . import config as settings
from .config import OperatorConfig


def build_parser(defaults: OperatorConfig | None = None) -> argparse.ArgumentParser:
    """The flags, defaulting to ``defaults`` (else the environment's values)."""
    d = OperatorConfig.from_env() if defaults is None else defaults
    return settings.build_parser(d, prog="clarion-operator", description=__doc__.split("\n")[0])


def main(argv: Sequence[str] | None = None) -> int:
    try:
        defaults = OperatorConfig.from_env()
    except envvars.EnvError as exc:
        print(f"clarion-operator: {exc}", file=sys.stderr)
        return 2
    config = defaults.from_args(build_parser(defaults).parse_args(argv))
    import kopf

    from . import handlers  # noqa: F401  (registers the handlers)

    kopf.configure(verbose=config.verbose)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    clusterwide = config.all_namespaces or not config.namespaces
    liveness = f"http://0.0.0.0:{config.liveness_port}/healthz" if config.liveness_port else None
    kopf.run(
        clusterwide=clusterwide,
        namespaces=() if clusterwide else config.namespaces,
        standalone=config.standalone,
        peering_name=None if config.standalone else config.peering,
        priority=random.randint(1, 10_000) if config.priority is None else config.priority,
        liveness_endpoint=liveness,
        memo=kopf.Memo(config=config),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
