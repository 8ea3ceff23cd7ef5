"""`InMemoryKubeApi`: the `KubeApi` seam held in a dict, for fast unit tests of `Reconciler`.

Why ship it with the operator: anything driving a `Reconciler` (tests, benchmarks, a dry run)
can do so without an API server. It is the faster tier only; the integration tests run the
same reconciler against a real kube-apiserver through `RestKubeApi`.

It keeps what those paths rely on, and no more: objects by (apiVersion, kind, namespace, name);
label-selector lists (`k=v,...`); apply creates or replaces the fields it is given while keeping
the server's own (uid, resourceVersion, creationTimestamp, status), bumping `generation` when
`spec` changes; delete honours the uid precondition (409 otherwise); status and merge patches
follow JSON merge patch (null deletes). Only the kinds of `kinds.PLURALS` are accepted, as
`RestKubeApi` does. `writes` counts every write, so a test can tell a no-op pass.
"""

from __future__ import annotations

import copy
import itertools
import uuid
from collections.abc import Mapping
from typing import Any

from mainsail.operator.kinds import PLURALS
from mainsail.operator.kube import KubeError, Obj

_Key = tuple[str, str, str, str]
_SERVER_FIELDS = ("uid", "resourceVersion", "creationTimestamp", "generation")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch of ``target`` by ``patch`` (a new value; inputs untouched)."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result: dict[str, Any] = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def matches(labels: Mapping[str, str], selector: str) -> bool:
    """Whether ``labels`` satisfy an equality-based selector (``a=b,c=d``; empty: all)."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        key, _, value = term.partition("=")
        if labels.get(key) != value:
            return False
    return True


class InMemoryKubeApi:
    """`KubeApi` over a dict; see the module docstring."""

    def __init__(self) -> None:
        self.objects: dict[_Key, Obj] = {}
        self.writes = 0
        self._versions = itertools.count(1)

    # ---------------------------------------------------------------- test helpers

    def put(self, obj: Mapping[str, Any]) -> Obj:
        """Store ``obj`` as if another client created it (server fields filled in)."""
        return self.apply(obj)

    def remove(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        """Delete as another client would (no precondition)."""
        self.objects.pop(self._key(api_version, kind, namespace, name), None)

    # ---------------------------------------------------------------- KubeApi

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> Obj | None:
        obj = self.objects.get(self._key(api_version, kind, namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def list(self, api_version: str, kind: str, namespace: str, selector: str) -> list[Obj]:
        self._key(api_version, kind, namespace, "")
        return [
            copy.deepcopy(obj)
            for (v, k, ns, _), obj in sorted(self.objects.items())
            if (v, k, ns) == (api_version, kind, namespace)
            and matches((obj["metadata"].get("labels") or {}), selector)
        ]

    def apply(self, obj: Mapping[str, Any]) -> Obj:
        meta = obj["metadata"]
        key = self._key(obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"])
        new: Obj = copy.deepcopy(dict(obj))
        old = self.objects.get(key)
        server = {k: v for k, v in (old or {}).get("metadata", {}).items() if k in _SERVER_FIELDS}
        if old is None:
            server = {"uid": str(uuid.uuid4()), "creationTimestamp": "2026-01-01T00:00:00Z",
                      "generation": 1}  # fmt: skip
        elif old.get("spec") != new.get("spec"):
            server["generation"] = int(server.get("generation", 1)) + 1
        new["metadata"] = {**new["metadata"], **server, "resourceVersion": self._version()}
        if old is not None and "status" in old and "status" not in new:
            new["status"] = old["status"]
        self.objects[key] = new
        self.writes += 1
        return copy.deepcopy(new)

    def delete(self, api_version: str, kind: str, namespace: str, name: str, uid: str) -> None:
        key = self._key(api_version, kind, namespace, name)
        obj = self.objects.get(key)
        if obj is None:
            return
        if obj["metadata"].get("uid") != uid:
            raise KubeError(409, f"Precondition failed: UID in precondition: {uid}")
        del self.objects[key]
        self.writes += 1

    def patch_status(
        self, api_version: str, kind: str, namespace: str, name: str, status: Mapping[str, Any]
    ) -> Obj:
        return self.patch(api_version, kind, namespace, name, {"status": dict(status)})

    def patch(
        self, api_version: str, kind: str, namespace: str, name: str, patch: Mapping[str, Any]
    ) -> Obj:
        key = self._key(api_version, kind, namespace, name)
        obj = self.objects.get(key)
        if obj is None:
            raise KubeError(404, f"{kind} {namespace}/{name} not found")
        new: Obj = merge_patch(obj, patch)
        if obj.get("spec") != new.get("spec"):
            new["metadata"]["generation"] = int(obj["metadata"].get("generation", 1)) + 1
        new["metadata"]["resourceVersion"] = self._version()
        self.objects[key] = new
        self.writes += 1
        return copy.deepcopy(new)

    # ---------------------------------------------------------------- internals

    def _version(self) -> str:
        return str(next(self._versions))

    @staticmethod
    def _key(api_version: str, kind: str, namespace: str, name: str) -> _Key:
        if (api_version, kind) not in PLURALS:
            raise ValueError(f"the operator does not manage {api_version} {kind}")
        return (api_version, kind, namespace, name)
