"""Which ports `mainsail up` binds, and a clear refusal when one is taken.

Why checked up front: the router binds in a child process, and a port already in use would
surface only as a traceback in its log after Redis and the model were prepared. Checking first
names the setting the port came from (`spec.router.httpPort` or `--http-port`) and the way out.

Several router replicas (`--routers N`, default `spec.router.replicas`) take consecutive ports:
replica ``i`` binds ``httpPort + i`` and ``grpcPort + i`` (a port of 0 stays 0: each replica
picks a free one). All of them are checked before anything starts.
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass, replace

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


MAX_LOCAL_ROUTERS = 16
"""More router processes than this on one machine only compete for its cores."""


def replica_ports(ports: RouterPorts, count: int) -> list[RouterPorts]:
    """Each of ``count`` replicas' ports: consecutive from ``ports`` (0 stays 0); ValueError
    naming the setting when ``count`` is out of range or a port would pass 65535."""
    if not 1 <= count <= MAX_LOCAL_ROUTERS:
        raise ValueError(f"--routers must be between 1 and {MAX_LOCAL_ROUTERS}, got {count}")
    for port, source in ((ports.http, ports.http_source), (ports.grpc, ports.grpc_source)):
        if port and port + count - 1 > 65535:
            raise ValueError(
                f"{source} {port} + {count - 1} (one port per router replica) passes 65535"
            )
    out = []
    for i in range(count):
        out.append(
            replace(
                ports,
                http=ports.http + i if ports.http else 0,
                grpc=ports.grpc + i if ports.grpc else 0,
                http_source=ports.http_source if i == 0 else f"{ports.http_source} + {i}",
                grpc_source=ports.grpc_source if i == 0 else f"{ports.grpc_source} + {i}",
            )
        )
    http = [p.http for p in out if p.http]
    grpc = [p.grpc for p in out if p.grpc]
    if set(http) & set(grpc):
        raise ValueError(
            f"router replicas' HTTP ports {http} and gRPC ports {grpc} overlap; "
            "move --http-port or --grpc-port apart"
        )
    return out


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
