"""`mainsail up` binds the spec's router ports unless told otherwise, and says clearly when
one is taken (checked against a real socket holding the port; the whole command in
tests/integration/test_cli_up_ports.py)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import yaml

from mainsail.cli.defaults import TINY_DEPLOYMENT
from mainsail.cli.local.ports import (
    PortInUseError,
    check_router_ports,
    replica_ports,
    router_ports,
)
from mainsail.spec.deployment import ModelDeployment

pytestmark = pytest.mark.unit


@pytest.fixture
def held_port() -> Iterator[int]:
    """A loopback port another socket is listening on for the test's duration."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield int(sock.getsockname()[1])


def _deployment(http_port: int = 8000, grpc_port: int = 50051) -> ModelDeployment:
    document = yaml.safe_load(TINY_DEPLOYMENT)
    document["spec"]["router"].update(httpPort=http_port, grpcPort=grpc_port)
    return ModelDeployment.model_validate(document)


def test_without_flags_the_spec_ports_are_used() -> None:
    ports = router_ports(_deployment(8123, 50123), None, None)
    assert (ports.http, ports.grpc) == (8123, 50123)
    assert (ports.http_source, ports.grpc_source) == (
        "spec.router.httpPort",
        "spec.router.grpcPort",
    )


def test_the_embedded_default_binds_8000_as_the_readme_says() -> None:
    ports = router_ports(
        ModelDeployment.model_validate(yaml.safe_load(TINY_DEPLOYMENT)), None, None
    )
    assert ports.http == 8000


def test_flags_override_the_spec_and_zero_means_any_free_port() -> None:
    ports = router_ports(_deployment(8123, 50123), 0, 9001)
    assert (ports.http, ports.grpc) == (0, 9001)
    assert (ports.http_source, ports.grpc_source) == ("--http-port", "--grpc-port")
    check_router_ports("127.0.0.1", router_ports(_deployment(), 0, 0))  # 0 always passes


def test_a_taken_spec_port_is_refused_naming_the_setting(held_port: int) -> None:
    ports = router_ports(_deployment(http_port=held_port), None, 0)
    with pytest.raises(PortInUseError) as info:
        check_router_ports("127.0.0.1", ports)
    message = str(info.value)
    assert f"spec.router.httpPort {held_port} on 127.0.0.1 is already in use" in message
    assert "--http-port" in message


def test_a_taken_flag_port_is_refused_naming_the_flag(held_port: int) -> None:
    with pytest.raises(PortInUseError, match=f"--grpc-port {held_port} on 127.0.0.1"):
        check_router_ports("127.0.0.1", router_ports(_deployment(), 0, held_port))


def test_router_replicas_take_consecutive_ports_and_zero_stays_free() -> None:
    replicas = replica_ports(router_ports(_deployment(8000, 50051), None, None), 3)
    assert [(p.http, p.grpc) for p in replicas] == [(8000, 50051), (8001, 50052), (8002, 50053)]
    assert replicas[2].http_source == "spec.router.httpPort + 2"
    assert [(p.http, p.grpc) for p in replica_ports(router_ports(_deployment(), 0, 0), 2)] == [
        (0, 0),
        (0, 0),
    ]


@pytest.mark.parametrize(
    ("http", "grpc", "count", "message"),
    [
        (8000, 50051, 0, "--routers must be between 1 and 16, got 0"),
        (8000, 50051, 17, "--routers must be between 1 and 16, got 17"),
        (65535, 50051, 2, "--http-port 65535 \\+ 1 .* passes 65535"),
        (8000, 8001, 2, "HTTP ports \\[8000, 8001\\] and gRPC ports \\[8001, 8002\\] overlap"),
    ],
)
def test_bad_router_replica_counts_and_ports_are_refused(
    http: int, grpc: int, count: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        replica_ports(router_ports(_deployment(), http, grpc), count)


def _listening(port: int) -> socket.socket | None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", port))
    except (OSError, OverflowError):  # taken, or past 65535
        sock.close()
        return None
    sock.listen(1)
    return sock


def _adjacent_ports() -> tuple[socket.socket, socket.socket]:
    """Two listening sockets on consecutive loopback ports (a busy machine may hold the
    neighbour of any one free port, so a pair is found, not assumed)."""
    for _ in range(100):
        first = _listening(0)
        assert first is not None
        second = _listening(first.getsockname()[1] + 1)
        if second is not None:
            return first, second
        first.close()
    raise AssertionError("no two consecutive free loopback ports in 100 tries")


def test_a_taken_port_of_a_later_replica_is_refused_naming_it() -> None:
    first, second = _adjacent_ports()
    port = first.getsockname()[1]
    first.close()  # replica 1's gRPC port is free; replica 2's (port + 1) stays held
    with second:
        replicas = replica_ports(router_ports(_deployment(), 0, port), 2)
        with pytest.raises(PortInUseError, match=f"--grpc-port \\+ 1 {port + 1} on 127.0.0.1"):
            for ports in replicas:
                check_router_ports("127.0.0.1", ports)
