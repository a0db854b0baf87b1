"""``clarion-operator``: run the operator in this process (kopf with Clarion's defaults).

Every flag is also an environment variable ``CLARION_OPERATOR_<FLAG>``
(``--metrics-port`` is ``CLARION_OPERATOR_METRICS_PORT``); a flag on the
command line wins. ``kopf run --standalone -A -m clarion_operator`` runs the
same handlers with kopf's own flags.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
from collections.abc import Sequence

from .config import ENV_PREFIX, OperatorConfig, env


def _bool(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clarion-operator", description=__doc__.split("\n")[0])
    scope = p.add_mutually_exclusive_group()
    ns_env = [n.strip() for n in (env("namespace") or "").split(",") if n.strip()]
    scope.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=ns_env,
        help=f"watch this namespace (repeatable) [env {ENV_PREFIX}NAMESPACE, comma-separated]",
    )
    scope.add_argument(
        "--all-namespaces",
        "-A",
        action="store_true",
        default=_bool(env("all-namespaces")),
        help=f"watch every namespace (the default) [env {ENV_PREFIX}ALL_NAMESPACES]",
    )
    peering = p.add_mutually_exclusive_group()
    peering.add_argument(
        "--peering",
        default=env("peering", "clarion"),
        help="kopf peering object: of several replicas only the highest priority works "
        f"[env {ENV_PREFIX}PEERING, default 'clarion']",
    )
    peering.add_argument(
        "--standalone",
        action="store_true",
        default=_bool(env("standalone")),
        help=f"no peering: this must be the only replica [env {ENV_PREFIX}STANDALONE]",
    )
    p.add_argument(
        "--priority",
        type=int,
        default=int(env("priority") or random.randint(1, 10_000)),
        help="peering priority (default random, so two replicas never tie) "
        f"[env {ENV_PREFIX}PRIORITY]",
    )
    p.add_argument(
        "--liveness-port",
        type=int,
        default=int(env("liveness-port") or 8080),
        help="kopf's liveness endpoint at /healthz; 0: off "
        f"[env {ENV_PREFIX}LIVENESS_PORT, default 8080]",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=int(env("metrics-port") or 9090),
        help=f"operator metrics at /metrics; 0: off [env {ENV_PREFIX}METRICS_PORT, default 9090]",
    )
    p.add_argument(
        "--verbose",
        "-v",
        action="store_true",
        default=_bool(env("verbose")),
        help=f"debug logging [env {ENV_PREFIX}VERBOSE]",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import kopf

    from . import handlers  # noqa: F401  (registers the handlers)

    kopf.configure(verbose=args.verbose)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    namespaces = list(args.namespace or [])
    clusterwide = args.all_namespaces or not namespaces
    config = OperatorConfig(metrics_port=args.metrics_port)
    liveness = f"http://0.0.0.0:{args.liveness_port}/healthz" if args.liveness_port else None
    kopf.run(
        clusterwide=clusterwide,
        namespaces=() if clusterwide else namespaces,
        standalone=args.standalone,
        peering_name=None if args.standalone else args.peering,
        priority=args.priority,
        liveness_endpoint=liveness,
        memo=kopf.Memo(config=config),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
