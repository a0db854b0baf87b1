"""The Kubernetes calls the operator makes (besides kopf's own watching), as plain dicts.

Every call here is listed in docs/operator.md, from which the chart's RBAC is
written: adding a call means adding it there too.
"""

from __future__ import annotations

import asyncio
import base64
import os
from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any

from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config.config_exception import ConfigException

from clarion import names

from .spec import SecretRef

MERGE_PATCH = "application/merge-patch+json"


class Kube:
    """A small client over kubernetes_asyncio: get/create/merge-patch, secrets, gateway status."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.apps = client.AppsV1Api(api)
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        #: One read-modify-write of a gateway's status at a time (see ``update_gateway_status``).
        self._status_locks: defaultdict[tuple[str, str], asyncio.Lock] = defaultdict(asyncio.Lock)

    @classmethod
    async def connect(cls) -> Kube:
        """In-cluster credentials in a pod, else the kubeconfig (``KUBECONFIG``)."""
        configuration = client.Configuration()
        try:
            config.load_incluster_config(client_configuration=configuration)
        except ConfigException:
            await config.load_kube_config(
                config_file=os.environ.get("KUBECONFIG"), client_configuration=configuration
            )
        return cls(client.ApiClient(configuration=configuration))

    async def close(self) -> None:
        await self.api.close()

    def _plain(self, obj: Any) -> dict[str, Any]:
        return dict(self.api.sanitize_for_serialization(obj))

    # -- Deployments and Services (apps/v1 deployments, v1 services) ---------

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            obj: Any
            if kind == "Deployment":
                obj = await self.apps.read_namespaced_deployment(name, namespace)
            else:
                obj = await self.core.read_namespaced_service(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return self._plain(obj)

    async def create(self, kind: str, namespace: str, body: Mapping[str, Any]) -> None:
        if kind == "Deployment":
            await self.apps.create_namespaced_deployment(namespace, dict(body))  # type: ignore[arg-type]
        else:
            await self.core.create_namespaced_service(namespace, dict(body))  # type: ignore[arg-type]

    async def patch(self, kind: str, namespace: str, name: str, body: Mapping[str, Any]) -> None:
        if kind == "Deployment":
            await self.apps.patch_namespaced_deployment(
                name,
                namespace,
                body,
                _content_type=MERGE_PATCH,  # type: ignore[call-arg]
            )
        else:
            await self.core.patch_namespaced_service(
                name,
                namespace,
                body,
                _content_type=MERGE_PATCH,  # type: ignore[call-arg]
            )

    # -- Secrets (v1 secrets: get) --------------------------------------------

    async def secret_value(self, namespace: str, ref: SecretRef) -> str | None:
        """One key of a Secret, decoded; None if the Secret or the key is missing."""
        try:
            secret = await self.core.read_namespaced_secret(ref.name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        data = secret.data or {}
        if ref.key not in data:
            return None
        return base64.b64decode(data[ref.key]).decode()

    # -- the gateway itself (clarion.dev websocketgateways: get, status patch) --
    #
    # Status fields that are set (the autoscaler's, apply's) are merge-patched
    # from the body kopf handed over. A field that is *added to* (a count) is
    # read fresh and patched under a per-gateway lock, so two handlers counting
    # at once both count: the pod-deletion handler and the sweep can.

    async def get_gateway(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            obj = await self.custom.get_namespaced_custom_object(
                names.CRD_GROUP, names.CRD_VERSION, namespace, names.CRD_PLURAL, name
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return dict(obj)

    async def patch_gateway_status(
        self, namespace: str, name: str, status: Mapping[str, Any]
    ) -> None:
        try:
            await self.custom.patch_namespaced_custom_object_status(
                names.CRD_GROUP,
                names.CRD_VERSION,
                namespace,
                names.CRD_PLURAL,
                name,
                {"status": dict(status)},
                _content_type=MERGE_PATCH,  # type: ignore[call-arg]
            )
        except ApiException as exc:
            if exc.status != 404:  # the gateway went away meanwhile: nothing to report on
                raise

    async def update_gateway_status(
        self,
        namespace: str,
        name: str,
        change: Callable[[Mapping[str, Any]], Mapping[str, Any]],
    ) -> None:
        """Patch what ``change`` makes of the gateway's current status (nothing if it is empty)."""
        async with self._status_locks[namespace, name]:
            gateway = await self.get_gateway(namespace, name)
            if gateway is None:
                return
            delta = change(gateway.get("status") or {})
            if delta:
                await self.patch_gateway_status(namespace, name, delta)
