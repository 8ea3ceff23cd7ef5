"""The one seam to the Kubernetes API: get, list, server-side apply, delete, status patch.

Why a seam: the reconciler is written against `KubeApi` (a Protocol), so unit tests run it on
`fake_kube.InMemoryKubeApi` and integration tests on the real API server through
`RestKubeApi`. `RestKubeApi` speaks plain REST through the `kubernetes` client's connection
and authentication (kubeconfig or in-cluster token) for the handful of kinds the operator
manages, so no API discovery is needed and RBAC stays exactly what the chart grants.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Protocol

from mainsail.operator.kinds import PLURALS

Obj = dict[str, Any]


class KubeError(RuntimeError):
    """An API call failed; `status` is the HTTP status (0 when there was no response)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


class KubeApi(Protocol):
    """What the reconciler needs from the API server."""

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> Obj | None: ...

    def list(self, api_version: str, kind: str, namespace: str, selector: str) -> list[Obj]: ...

    def apply(self, obj: Mapping[str, Any]) -> Obj: ...

    def delete(self, api_version: str, kind: str, namespace: str, name: str, uid: str) -> None: ...

    def patch_status(
        self, api_version: str, kind: str, namespace: str, name: str, status: Mapping[str, Any]
    ) -> Obj: ...

    def patch(
        self, api_version: str, kind: str, namespace: str, name: str, patch: Mapping[str, Any]
    ) -> Obj: ...


def resource_path(api_version: str, kind: str, namespace: str, name: str | None = None) -> str:
    """REST path of a namespaced collection or object."""
    plural = PLURALS.get((api_version, kind))
    if plural is None:
        raise ValueError(f"the operator does not manage {api_version} {kind}")
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = f"{prefix}/namespaces/{namespace}/{plural}"
    return path if name is None else f"{path}/{name}"


class RestKubeApi:
    """`KubeApi` over a `kubernetes.client.ApiClient` (connection pool, auth, TLS)."""

    def __init__(self, api_client: Any, field_manager: str, timeout_seconds: float) -> None:
        self._client = api_client
        self._field_manager = field_manager
        self._timeout = timeout_seconds

    def _call(
        self,
        method: str,
        path: str,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> Obj | None:
        from kubernetes.client.exceptions import ApiException

        headers = {"Accept": "application/json", "Content-Type": content_type}
        request = self._client.param_serialize(
            method, path, query_params=query or [], header_params=headers, body=body,
            auth_settings=["BearerToken"],
        )  # fmt: skip
        try:
            response = self._client.call_api(*request, _request_timeout=self._timeout)
            response.read()
        except ApiException as exc:
            raise KubeError(int(exc.status or 0), str(exc.body or exc.reason)) from exc
        if response.status == 404 and method in ("GET", "DELETE"):
            return None
        if not 200 <= response.status < 300:
            raise KubeError(response.status, response.data.decode(errors="replace")[:2000])
        result: Obj = json.loads(response.data or b"{}")
        return result

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> Obj | None:
        return self._call("GET", resource_path(api_version, kind, namespace, name))

    def list(self, api_version: str, kind: str, namespace: str, selector: str) -> list[Obj]:
        path = resource_path(api_version, kind, namespace)
        result = self._call("GET", path, [("labelSelector", selector)]) or {}
        items: list[Obj] = result.get("items") or []
        for item in items:  # list items lack these; the planner keys on them
            item.setdefault("apiVersion", api_version)
            item.setdefault("kind", kind)
        return items

    def apply(self, obj: Mapping[str, Any]) -> Obj:
        meta = obj["metadata"]
        path = resource_path(obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"])
        query = [("fieldManager", self._field_manager), ("force", "true")]
        return self._required(
            self._call("PATCH", path, query, dict(obj), "application/apply-patch+yaml")
        )

    def delete(self, api_version: str, kind: str, namespace: str, name: str, uid: str) -> None:
        body = {"preconditions": {"uid": uid}, "propagationPolicy": "Background"}
        self._call("DELETE", resource_path(api_version, kind, namespace, name), body=body)

    def patch_status(
        self, api_version: str, kind: str, namespace: str, name: str, status: Mapping[str, Any]
    ) -> Obj:
        path = resource_path(api_version, kind, namespace, name) + "/status"
        result = self._call(
            "PATCH",
            path,
            body={"status": dict(status)},
            content_type="application/merge-patch+json",
        )
        return self._required(result)

    def patch(
        self, api_version: str, kind: str, namespace: str, name: str, patch: Mapping[str, Any]
    ) -> Obj:
        """A JSON merge patch of the object (the autoscaler's `spec.replicas`)."""
        path = resource_path(api_version, kind, namespace, name)
        result = self._call(
            "PATCH", path, body=dict(patch), content_type="application/merge-patch+json"
        )
        return self._required(result)

    @staticmethod
    def _required(result: Obj | None) -> Obj:
        if result is None:
            raise KubeError(404, "object not found")
        return result


def api_client_from_environment(kubeconfig: str | None = None) -> Any:
    """An ApiClient from a kubeconfig (argument or KUBECONFIG) or the in-cluster token."""
    from kubernetes import client, config

    if kubeconfig is None:
        try:
            configuration = client.Configuration()
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            return client.ApiClient(configuration)
        except config.ConfigException:
            pass
    return config.new_client_from_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
