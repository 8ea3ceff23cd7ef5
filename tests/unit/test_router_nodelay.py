"""Streaming sockets have TCP_NODELAY: Nagle plus delayed ACK costs ~40 ms per streamed
response on a reused connection (seen in a peer router)."""

from __future__ import annotations

import socket

import pytest

from mainsail.router.server import bind_socket

pytestmark = pytest.mark.unit


def test_accepted_connections_inherit_tcp_nodelay() -> None:
    listener = bind_socket("127.0.0.1", 0)
    listener.setblocking(True)
    try:
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            conn, _ = listener.accept()
            with conn:
                assert conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        listener.close()
