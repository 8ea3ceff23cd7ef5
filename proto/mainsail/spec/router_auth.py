"""Where the router finds its credentials: written once for the router (which reads them) and
the operator (which wires a Secret to them). See `mainsail.router.front.auth`."""

from __future__ import annotations

API_KEYS_ENV = "MAINSAIL_ROUTER_API_KEYS"
"""Comma-separated client API keys; unset or empty leaves the inference API open."""
ADMIN_TOKEN_ENV = "MAINSAIL_ROUTER_ADMIN_TOKEN"
"""Bearer token of the admin endpoints (`/workers`, `/requests/*`); unset leaves them open."""
SECRET_KEYS = {API_KEYS_ENV: "apiKeys", ADMIN_TOKEN_ENV: "adminToken"}
"""Environment variable -> key in the Secret named by `spec.router.auth.secretName`."""
