"""Who may call the router: client API keys for inference, one token for the admin endpoints.

Why from the environment and not the config document: the config is a ConfigMap shared with
every worker and readable by anyone who can read the namespace; keys belong in a Secret
mounted as environment variables (the operator wires `spec.router.auth.secretName`).

    MAINSAIL_ROUTER_API_KEYS      comma-separated; when set, `/v1/*` over HTTP
                                  (`Authorization: Bearer <key>`) and gRPC `Inference`
                                  (metadata `authorization: Bearer <key>`) require one of them
    MAINSAIL_ROUTER_ADMIN_TOKEN   `/workers` and `/requests/*` require it; unset, they are
                                  refused (403): the admin API is never open

No client keys means an open inference API (what a laptop wants). The admin API is
different: it decides who serves what (drain, expert parallelism, migration), so a router
without an admin token refuses it rather than trust whoever reaches the port (docs/
security.md). `mainsail up` generates a token per run; the operator issues one per
deployment. `/health` and `/metrics` stay open (probes and Prometheus). Comparisons are
constant-time.

Tenants (prefix-cache isolation, docs/security.md): a request's tenant is the value of the
header the operator maps (`tenant_header`, e.g. set by a gateway that authenticated the
user), else a digest of its API key, else the shared tenant "" (an open router). The tenant
becomes the request's KV cache namespace: prefixes are shared inside a tenant, never across.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass

from mainsail.spec.router_auth import ADMIN_TOKEN_ENV, API_KEYS_ENV


@dataclass(frozen=True)
class Credentials:
    """Accepted client keys (empty: inference is open) and the admin token (None: the admin
    endpoints are refused)."""

    api_keys: frozenset[str] = frozenset()
    admin_token: str | None = None
    tenant_header: str = ""  # lower-case header (gRPC metadata key) naming the tenant

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Credentials:
        env = os.environ if environ is None else environ
        keys = frozenset(k.strip() for k in env.get(API_KEYS_ENV, "").split(",") if k.strip())
        admin = env.get(ADMIN_TOKEN_ENV, "").strip() or None
        return cls(keys, admin)

    def client_allowed(self, authorization: str | None) -> bool:
        """Whether an `Authorization` value may call the inference API."""
        if not self.api_keys:
            return True
        presented = _bearer(authorization)
        return presented is not None and any(
            hmac.compare_digest(presented.encode(), key.encode()) for key in self.api_keys
        )

    def tenant(self, authorization: str | None, mapped: str | None = None) -> str:
        """The tenant of a request: the operator-mapped header's value, else a digest of the
        API key it presents, else "" (the shared namespace). Never the key itself."""
        if self.tenant_header and mapped:
            return "h:" + mapped.strip()[:128]
        presented = _bearer(authorization)
        if not presented:
            return ""
        return "k:" + hashlib.blake2b(presented.encode(), digest_size=12).hexdigest()

    @property
    def admin_enabled(self) -> bool:
        """Whether this router has an admin token (else its admin API refuses every call)."""
        return self.admin_token is not None

    def admin_allowed(self, authorization: str | None) -> bool:
        """Whether an `Authorization` value may call the admin endpoints (never without an
        admin token configured: see `admin_enabled`)."""
        if self.admin_token is None:
            return False
        presented = _bearer(authorization)
        return presented is not None and hmac.compare_digest(
            presented.encode(), self.admin_token.encode()
        )


def _bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None
