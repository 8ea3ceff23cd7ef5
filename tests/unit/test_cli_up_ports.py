"""`mainsail up` binds the spec's router ports unless told otherwise, and says clearly when
one is taken (checked against a real socket holding the port; the whole command in
tests/integration/test_cli_up_ports.py)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import yaml

from mainsail.cli.defaults import TINY_DEPLOYMENT
from mainsail.cli.local.ports import PortInUseError, check_router_ports, router_ports
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
