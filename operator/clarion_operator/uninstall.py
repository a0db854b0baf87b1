"""``python -m clarion_operator.uninstall``: the chart's pre-delete hook.

Helm deletes a release's Deployments and RBAC before anything else, so the
operator would be gone when the finalizer it put on each WebSocketGateway must
come off: the gateway would stay Terminating and its pods keep running. The
hook runs first, while the operator still runs: it deletes the release's
gateways (those labelled ``clarion.dev/release=<release>``) and waits until the
operator has let them go. If the operator does not (it is scaled to zero, or
broken), after ``--timeout`` seconds the hook removes the finalizers itself, so
that the uninstall never hangs; the Deployments and Services go with their
owner either way (garbage collection by owner reference).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence

from kubernetes_asyncio.client.exceptions import ApiException

from clarion import names

from .kube import MERGE_PATCH, Kube

#: Put on the chart's gateways; the hook deletes exactly those.
RELEASE_LABEL = "clarion.dev/release"
#: The hook's requests are told apart from the operator's by this (the chart's hook Role).
USER_AGENT = "clarion-uninstall"


async def _names(kube: Kube, namespace: str, selector: str) -> list[str]:
    listing = await kube.custom.list_namespaced_custom_object(
        names.CRD_GROUP, names.CRD_VERSION, namespace, names.CRD_PLURAL, label_selector=selector
    )
    return [str(item["metadata"]["name"]) for item in listing.get("items", [])]


async def uninstall(
    kube: Kube, namespace: str, release: str, timeout: float, poll: float = 0.5
) -> tuple[list[str], list[str]]:
    """Delete the release's gateways; (the ones the operator let go, the ones forced)."""
    selector = f"{RELEASE_LABEL}={release}"
    gateways = await _names(kube, namespace, selector)
    for name in gateways:
        try:
            await kube.custom.delete_namespaced_custom_object(
                names.CRD_GROUP, names.CRD_VERSION, namespace, names.CRD_PLURAL, name
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
    deadline = time.monotonic() + timeout
    left = await _names(kube, namespace, selector)
    while left and time.monotonic() < deadline:
        await asyncio.sleep(poll)
        left = await _names(kube, namespace, selector)
    for name in left:  # the operator did not finish: let the objects go
        try:
            await kube.custom.patch_namespaced_custom_object(
                names.CRD_GROUP,
                names.CRD_VERSION,
                namespace,
                names.CRD_PLURAL,
                name,
                {"metadata": {"finalizers": None}},
                _content_type=MERGE_PATCH,  # type: ignore[call-arg]
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
    return [g for g in gateways if g not in left], left


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m clarion_operator.uninstall", description=__doc__)
    p.add_argument("--namespace", required=True, help="the release's namespace")
    p.add_argument("--release", required=True, help="the Helm release's name")
    p.add_argument(
        "--timeout", type=float, default=60, help="seconds to wait for the operator [60]"
    )
    args = p.parse_args(argv)

    async def run() -> tuple[list[str], list[str]]:
        kube = await Kube.connect()
        kube.api.user_agent = USER_AGENT
        try:
            return await uninstall(kube, args.namespace, args.release, args.timeout)
        finally:
            await kube.close()

    done, forced = asyncio.run(run())
    print(f"gateways deleted by the operator: {', '.join(done) or 'none'}")
    if forced:
        print(
            f"operator did not finish within {args.timeout:g} s; finalizers removed: "
            + ", ".join(forced)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
