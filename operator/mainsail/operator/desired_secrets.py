"""The deployment's own credentials: one Secret the operator issues, owns and rotates.

Why the operator issues them: secure by default means a deployment nobody configured is not
open. So unless the spec names its own Secret (`spec.router.auth.secretName`), the operator
generates a client API key and an admin token; and it always generates the worker plane's
credential (`mainsail.spec.worker_auth`: a token, and a private CA with one leaf for mutual
TLS between router and workers). Users read their key from this Secret
(`kubectl get secret <name>-worker-credential -o jsonpath='{.data.apiKeys}' | base64 -d`).

Issued once: the observed Secret's values are kept on every pass (the function stays pure
given the Secret it observed and an injected generator). Rotation on request: set the
annotation `mainsail.io/rotate-credentials` on the ModelDeployment to a new value; when it
differs from the one the Secret was issued under, everything is issued anew (and the router
and Ray pods roll, since they carry the Secret's issue in an annotation).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mainsail.operator.naming import Owner, child_metadata
from mainsail.spec.deployment import ModelDeploymentSpec
from mainsail.spec.router_auth import ADMIN_TOKEN_ENV, API_KEYS_ENV, SECRET_KEYS
from mainsail.spec.worker_auth import (
    REDIS_PASSWORD_ENV,
    TLS_FILES,
    TOKEN_KEY,
    WORKER_TLS_DIR_ENV,
    WORKER_TOKEN_ENV,
    TLSMaterial,
    generate_token,
    secret_name,
)

COMPONENT = "credentials"
ANNOTATION_ROTATE = "mainsail.io/rotate-credentials"
ANNOTATION_ISSUE = "mainsail.io/credentials-issue"
TLS_MOUNT = "/var/run/mainsail/worker-tls"
TLS_VOLUME = "worker-tls"
_TLS_KEYS = {"ca.crt": "ca.crt", "tls.crt": "tls.crt", "tls.key": "tls.key"}
REDIS_PASSWORD_KEY = "redisPassword"


@dataclass(frozen=True)
class Issuer:
    """Where fresh credentials come from (a seam: tests inject deterministic ones)."""

    token: Callable[[], str] = generate_token
    tls: Callable[[], TLSMaterial] | None = None

    def issue_tls(self) -> TLSMaterial:
        if self.tls is not None:
            return self.tls()
        from mainsail.spec.worker_tls import issue

        return issue()


def _b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode()


def rotation(owner_annotations: Mapping[str, str] | None) -> str:
    """The rotation request the owner carries ("" when none)."""
    return (owner_annotations or {}).get(ANNOTATION_ROTATE, "")


def credentials_secret(
    owner: Owner,
    spec: ModelDeploymentSpec,
    observed: Mapping[str, Any] | None,
    rotate: str = "",
    issuer: Issuer | None = None,
) -> dict[str, Any]:
    """The credentials Secret: the observed values when it exists and no rotation was asked
    for since it was issued, freshly issued ones otherwise."""
    issuer = issuer or Issuer()
    meta = (observed or {}).get("metadata") or {}
    issued_under = (meta.get("annotations") or {}).get(ANNOTATION_ROTATE, "")
    data: dict[str, str] = dict((observed or {}).get("data") or {})
    wanted = [TOKEN_KEY, REDIS_PASSWORD_KEY, *_TLS_KEYS]
    if spec.router.auth.secret_name is None:
        wanted += list(SECRET_KEYS.values())
    if observed is None or issued_under != rotate:
        data = {}
    for key in (TOKEN_KEY, REDIS_PASSWORD_KEY):
        if key not in data:
            data[key] = _b64(issuer.token())
    if any(k not in data for k in _TLS_KEYS):
        tls = issuer.issue_tls()
        data.update({"ca.crt": _b64(tls.ca), "tls.crt": _b64(tls.cert), "tls.key": _b64(tls.key)})
    if spec.router.auth.secret_name is None:
        for key in SECRET_KEYS.values():
            if key not in data:
                data[key] = _b64(issuer.token())
    data = {k: v for k, v in data.items() if k in wanted}
    digest = hashlib.sha256("".join(f"{k}={data[k]};" for k in sorted(data)).encode())
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": child_metadata(
            owner,
            secret_name(owner.name),
            COMPONENT,
            annotations={ANNOTATION_ROTATE: rotate, ANNOTATION_ISSUE: digest.hexdigest()[:16]},
        ),
        "data": data,
    }


def admin_token(secret: Mapping[str, Any] | None) -> str | None:
    """The router's admin token held in ``secret`` (the operator drains workers with it)."""
    value = ((secret or {}).get("data") or {}).get(SECRET_KEYS[ADMIN_TOKEN_ENV])
    if not value:
        return None
    return base64.b64decode(value).decode().strip() or None


def issue_of(secret: Mapping[str, Any]) -> str:
    """The digest of a credentials Secret's values (pods carry it to roll on rotation)."""
    return str(secret["metadata"]["annotations"][ANNOTATION_ISSUE])


def worker_plane_env(owner: Owner) -> list[dict[str, Any]]:
    """Env of router and Ray containers: the worker token and where the TLS files are."""
    return [
        {
            "name": WORKER_TOKEN_ENV,
            "valueFrom": {"secretKeyRef": {"name": secret_name(owner.name), "key": TOKEN_KEY}},
        },
        {"name": WORKER_TLS_DIR_ENV, "value": TLS_MOUNT},
    ]


def redis_password_env(owner: Owner) -> list[dict[str, Any]]:
    """The cache's password, for the Redis server and its clients (the workers)."""
    return [
        {
            "name": REDIS_PASSWORD_ENV,
            "valueFrom": {
                "secretKeyRef": {"name": secret_name(owner.name), "key": REDIS_PASSWORD_KEY}
            },
        }
    ]


def client_auth_env(owner: Owner, spec: ModelDeploymentSpec) -> list[dict[str, Any]]:
    """The router's client API keys and admin token: from the Secret the spec names, else
    from the operator's own (auth is on by default)."""
    named = spec.router.auth.secret_name
    return [
        {
            "name": env,
            "valueFrom": {
                "secretKeyRef": {
                    "name": named or secret_name(owner.name),
                    "key": key,
                    "optional": named is not None,
                }
            },
        }
        for env, key in SECRET_KEYS.items()
    ]


def tls_volume(owner: Owner) -> dict[str, Any]:
    """The TLS files of the credentials Secret, readable by the pod's user only."""
    return {
        "name": TLS_VOLUME,
        "secret": {
            "secretName": secret_name(owner.name),
            "defaultMode": 0o440,
            "items": [{"key": k, "path": k} for k in TLS_FILES],
        },
    }


def tls_mount() -> dict[str, Any]:
    return {"name": TLS_VOLUME, "mountPath": TLS_MOUNT, "readOnly": True}


__all__ = [
    "ADMIN_TOKEN_ENV",
    "ANNOTATION_ROTATE",
    "API_KEYS_ENV",
    "Issuer",
    "admin_token",
    "client_auth_env",
    "credentials_secret",
    "issue_of",
    "redis_password_env",
    "rotation",
    "tls_mount",
    "tls_volume",
    "worker_plane_env",
]
