"""The credential of the worker-facing APIs, distinct from client API keys.

Why its own credential: a process that can call `Registry.Register` receives users' prompts
and its output reaches them; one that can call `Worker.SubmitMany` spends a worker's GPU and
reads its KV events. Neither may be reachable with a client's API key (clients hold many, and
they leak), nor with nothing at all. So the router and its workers share one token, and can
additionally run router -> worker gRPC over mutual TLS:

    MAINSAIL_WORKER_TOKEN     shared bearer token: the router's `Registry` (on its own "fleet
                              port") and the worker's `Worker` service refuse calls without
                              `authorization: Bearer <token>` (UNAUTHENTICATED); a party
                              started without one refuses every call (PERMISSION_DENIED,
                              naming this setting), as no caller could prove anything to it
    MAINSAIL_WORKER_TLS_DIR   directory with `ca.crt`, `tls.crt`, `tls.key` (the layout of a
                              Kubernetes TLS Secret plus its CA); when set, workers serve the
                              Worker API and the router its fleet port over TLS, each requiring
                              a client certificate signed by the CA, and each presents its own
                              when calling the other

Secure by default, like the router's admin API without its token: no token means closed, never
open, so a router or worker started by hand without one serves no one on the worker plane
instead of admitting anyone who can reach its port. There is no switch to open it.

`mainsail up` generates a token itself (nothing to set up, everything bound to loopback); on a
cluster the operator issues both into a Secret it owns (`secret_name`) and mounts them into
router and worker pods. Used by `mainsail.router` (server and client side) and
`mainsail.workers` (both sides too); the comparison is constant-time.
"""

from __future__ import annotations

import hmac
import os
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import grpc

WORKER_TOKEN_ENV = "MAINSAIL_WORKER_TOKEN"
WORKER_TLS_DIR_ENV = "MAINSAIL_WORKER_TLS_DIR"
REDIS_PASSWORD_ENV = "MAINSAIL_REDIS_PASSWORD"
"""The cache pool's Redis password (workers add it to a `redis://` URL that has none)."""
TLS_FILES = ("ca.crt", "tls.crt", "tls.key")
"""Files in `MAINSAIL_WORKER_TLS_DIR` (CA bundle, this party's certificate chain and key)."""
TLS_SERVER_NAME = "mainsail-worker"
"""The name every worker-plane certificate carries and every client verifies (worker addresses
are pod IPs, unknown when the certificate is issued)."""
TOKEN_KEY = "workerToken"
"""Key of the token in the operator's worker-credential Secret (TLS files are keys too)."""
UNAUTHENTICATED_DETAIL = (
    "This is a worker-facing API: send metadata `authorization: Bearer <worker token>` "
    f"(the router's and workers' {WORKER_TOKEN_ENV})."
)
Party = Literal["router", "worker"]
"""Which server of the worker plane answers: the router's fleet port or a worker's API."""
_DISABLED_WHAT: dict[Party, tuple[str, str]] = {
    "router": ("Worker registration is disabled", "no worker can register with it"),
    "worker": ("The Worker API is disabled", "no router or worker can call it"),
}


def disabled_detail(party: Party) -> str:
    """What a party without a token answers every call (PERMISSION_DENIED): why, and the
    setting that fixes it, since no bearer the caller could send would open it."""
    what, effect = _DISABLED_WHAT[party]
    return (
        f"{what}: this {party} was started without {WORKER_TOKEN_ENV}, so {effect}. "
        f"Start the router and its workers with the same {WORKER_TOKEN_ENV} "
        "(`mainsail up` and the operator set one for you)."
    )


def secret_name(deployment: str) -> str:
    """The Secret the operator creates for a deployment's worker credential."""
    return f"{deployment}-worker-credential"


def generate_token() -> str:
    """A fresh token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class TLSMaterial:
    """PEM bytes of the CA bundle, this party's certificate chain and its private key."""

    ca: bytes
    cert: bytes
    key: bytes

    @classmethod
    def from_dir(cls, directory: Path) -> TLSMaterial:
        missing = [n for n in TLS_FILES if not (directory / n).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{WORKER_TLS_DIR_ENV}={directory}: missing {', '.join(missing)}"
            )
        ca, cert, key = ((directory / n).read_bytes() for n in TLS_FILES)
        return cls(ca, cert, key)


@dataclass(frozen=True)
class WorkerCredential:
    """What a party of the worker plane presents and accepts. Without a token it presents
    nothing and, as a server, accepts nothing (`refusal`)."""

    token: str | None = None
    tls: TLSMaterial | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WorkerCredential:
        env = os.environ if environ is None else environ
        token = env.get(WORKER_TOKEN_ENV, "").strip() or None
        tls_dir = env.get(WORKER_TLS_DIR_ENV, "").strip()
        tls = TLSMaterial.from_dir(Path(tls_dir)) if tls_dir else None
        return cls(token, tls)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Call metadata carrying the token (empty without one)."""
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    @property
    def enabled(self) -> bool:
        """Whether this party, as a server, can accept anyone (it has a token)."""
        return self.token is not None

    def allows(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> bool:
        """Whether a call with ``metadata`` carries the token (never, when there is none)."""
        if self.token is None:
            return False
        for key, value in metadata or ():
            if key != "authorization" or not isinstance(value, str):
                continue
            scheme, _, presented = value.strip().partition(" ")
            if scheme.lower() == "bearer" and hmac.compare_digest(
                presented.strip().encode(), self.token.encode()
            ):
                return True
        return False

    def refusal(
        self, metadata: Iterable[tuple[str, str | bytes]] | None, party: Party
    ) -> tuple[grpc.StatusCode, str] | None:
        """None when a call with ``metadata`` may proceed; else the status and detail that
        ``party`` answers: PERMISSION_DENIED naming the missing setting when it has no token
        (nothing the caller sends can help), UNAUTHENTICATED when the call lacks the token."""
        if self.token is None:
            return grpc.StatusCode.PERMISSION_DENIED, disabled_detail(party)
        if self.allows(metadata):
            return None
        return grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_DETAIL

    def server_credentials(self) -> grpc.ServerCredentials | None:
        """Mutual-TLS credentials for a server of the worker plane; None for plaintext."""
        if self.tls is None:
            return None
        return grpc.ssl_server_credentials(
            [(self.tls.key, self.tls.cert)],
            root_certificates=self.tls.ca,
            require_client_auth=True,
        )

    def channel_options(self) -> list[tuple[str, str]]:
        """Channel options naming the certificate's server name (`worker_tls`) under TLS."""
        if self.tls is None:
            return []
        return [("grpc.ssl_target_name_override", TLS_SERVER_NAME)]

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        """Mutual-TLS credentials for a client of the worker plane; None for plaintext."""
        if self.tls is None:
            return None
        return grpc.ssl_channel_credentials(
            root_certificates=self.tls.ca,
            private_key=self.tls.key,
            certificate_chain=self.tls.cert,
        )

    def open_channel(
        self, address: str, options: Sequence[tuple[str, str | int]] = ()
    ) -> grpc.aio.Channel:
        """An aio channel to a server of the worker plane (a worker's API, the router's fleet
        port): mutual TLS when this party has TLS material, plaintext otherwise."""
        merged = [*options, *self.channel_options()]
        tls = self.channel_credentials()
        if tls is None:
            return grpc.aio.insecure_channel(address, options=merged)
        return grpc.aio.secure_channel(address, tls, options=merged)


def token_guard(
    credential: WorkerCredential, party: Party = "worker"
) -> grpc.aio.ServerInterceptor:
    """A server interceptor refusing every call without the worker token (UNAUTHENTICATED),
    and every call at all when ``credential`` has none (PERMISSION_DENIED, `refusal`)."""
    return _TokenGuard(credential, party)


class _TokenGuard(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, credential: WorkerCredential, party: Party) -> None:
        self.credential = credential
        self.party = party

    async def intercept_service(
        self,
        continuation: object,
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)  # type: ignore[operator]
        if handler is None:
            return None
        refused = self.credential.refusal(handler_call_details.invocation_metadata, self.party)
        if refused is None:
            return handler  # type: ignore[no-any-return]
        return _denying(handler, *refused)


def _denying(
    handler: grpc.RpcMethodHandler, code: grpc.StatusCode, detail: str
) -> grpc.RpcMethodHandler:
    """A handler of ``handler``'s shape that aborts with ``code`` and ``detail``."""

    async def deny(request: object, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, detail)

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(deny)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(deny)
    return grpc.unary_unary_rpc_method_handler(deny)
