"""Where the router finds its credentials: written once for the router (which reads them) and
the operator (which wires a Secret to them). See `mainsail.router.front.auth`."""

from __future__ import annotations

API_KEYS_ENV = "MAINSAIL_ROUTER_API_KEYS"
"""Comma-separated client API keys; unset or empty leaves the inference API open."""
ADMIN_TOKEN_ENV = "MAINSAIL_ROUTER_ADMIN_TOKEN"
"""Bearer token of the admin endpoints (`/workers`, `/requests/*`); unset, the router refuses
them (403). `mainsail up` generates one per run."""
LOCAL_ADMIN_TOKEN_FILE = "admin-token"
"""Where `mainsail up` keeps the run's admin token (mode 0600), in its work directory next to
the status file; `mainsail status` reads it when the environment has no token."""
SECRET_KEYS = {API_KEYS_ENV: "apiKeys", ADMIN_TOKEN_ENV: "adminToken"}
"""Environment variable -> key in the Secret named by `spec.router.auth.secretName`."""
