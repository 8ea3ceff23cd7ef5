"""Which ports `mainsail up` binds, and a clear refusal when one is taken.

Why checked up front: the router binds in a child process, and a port already in use would
surface only as a traceback in its log after Redis and the model were prepared. Checking first
names the setting the port came from (`spec.router.httpPort` or `--http-port`) and the way out.
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass

from mainsail.spec.deployment import ModelDeployment


class PortInUseError(OSError):
    """A port `mainsail up` was told to bind is held by another process."""


@dataclass(frozen=True)
class RouterPorts:
    """The router's ports (0 = any free port) and where each came from."""

    http: int
    grpc: int
    http_source: str
    grpc_source: str


def router_ports(
    deployment: ModelDeployment, http_port: int | None, grpc_port: int | None
) -> RouterPorts:
    """The command-line port where given, else the spec's `router.httpPort`/`grpcPort`."""
    spec = deployment.spec.router
    return RouterPorts(
        http=spec.http_port if http_port is None else http_port,
        grpc=spec.grpc_port if grpc_port is None else grpc_port,
        http_source="spec.router.httpPort" if http_port is None else "--http-port",
        grpc_source="spec.router.grpcPort" if grpc_port is None else "--grpc-port",
    )


def check_free(host: str, port: int, source: str, flag: str) -> None:
    """Raises `PortInUseError` naming ``source`` when ``host:port`` cannot be bound now (as the
    router binds it, with SO_REUSEADDR). Port 0 always passes."""
    if port == 0:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            raise PortInUseError(
                errno.EADDRINUSE,
                f"{source} {port} on {host} is already in use by another process; stop it, "
                f"or pass {flag} <port> ({flag} 0 picks any free port)",
            ) from None


def check_router_ports(host: str, ports: RouterPorts) -> None:
    """Both router ports can be bound right now (or a `PortInUseError` naming the first)."""
    check_free(host, ports.http, ports.http_source, "--http-port")
    check_free(host, ports.grpc, ports.grpc_source, "--grpc-port")
