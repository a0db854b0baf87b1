"""``clarion-operator``: run the operator in this process (kopf with Clarion's defaults).

Every flag is also an environment variable ``CLARION_OPERATOR_<FLAG>``
(``--metrics-port`` is ``CLARION_OPERATOR_METRICS_PORT``), read in
``config.py``; a flag on the command line wins. ``kopf run --standalone -A -m
clarion_operator`` runs the same handlers with kopf's own flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import random
import sys
from collections.abc import Sequence

from clarion import envvars

from .config import OperatorConfig, env_var


def build_parser(defaults: OperatorConfig | None = None) -> argparse.ArgumentParser:
    """The flags, defaulting to ``defaults`` (else the environment's values)."""
    d = OperatorConfig.from_env() if defaults is None else defaults
    p = argparse.ArgumentParser(prog="clarion-operator", description=__doc__.split("\n")[0])
    scope = p.add_mutually_exclusive_group()
    scope.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=list(d.namespaces),
        help=f"watch this namespace (repeatable) [env {env_var('namespace')}, comma-separated]",
    )
    scope.add_argument(
        "--all-namespaces",
        "-A",
        action="store_true",
        default=d.all_namespaces,
        help=f"watch every namespace (the default) [env {env_var('all-namespaces')}]",
    )
    peering = p.add_mutually_exclusive_group()
    peering.add_argument(
        "--peering",
        default=d.peering,
        help="kopf peering object: of several replicas only the highest priority works "
        f"[env {env_var('peering')}, default {OperatorConfig.peering!r}]",
    )
    peering.add_argument(
        "--standalone",
        action="store_true",
        default=d.standalone,
        help=f"no peering: this must be the only replica [env {env_var('standalone')}]",
    )
    p.add_argument(
        "--priority",
        type=int,
        default=d.priority,
        help="peering priority (default random, so two replicas never tie) "
        f"[env {env_var('priority')}]",
    )
    p.add_argument(
        "--liveness-port",
        type=int,
        default=d.liveness_port,
        help="kopf's liveness endpoint at /healthz; 0: off "
        f"[env {env_var('liveness-port')}, default {OperatorConfig.liveness_port}]",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=d.metrics_port,
        help="operator metrics at /metrics; 0: off "
        f"[env {env_var('metrics-port')}, default {OperatorConfig.metrics_port}]",
    )
    p.add_argument(
        "--verbose",
        "-v",
        action="store_true",
        default=d.verbose,
        help=f"debug logging [env {env_var('verbose')}]",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    try:
        defaults = OperatorConfig.from_env()
    except envvars.EnvError as exc:
        print(f"clarion-operator: {exc}", file=sys.stderr)
        return 2
    args = build_parser(defaults).parse_args(argv)
    config = dataclasses.replace(
        defaults,
        namespaces=tuple(args.namespace or ()),
        all_namespaces=args.all_namespaces,
        peering=args.peering,
        standalone=args.standalone,
        priority=args.priority,
        liveness_port=args.liveness_port,
        metrics_port=args.metrics_port,
        verbose=args.verbose,
    )
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
