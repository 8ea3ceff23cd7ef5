"""gRPC keepalive settings both ends of a long-lived stream agree on.

Why written once: the router keeps one `SubmitMany` stream and one `KVEvents` stream open per
worker, often idle for minutes. It pings to notice a dead peer; a gRPC server that allows
fewer pings than the client sends answers with GOAWAY `too_many_pings`, which drops every
idle stream on the connection. So the client's interval and the server's minimum accepted
interval come from the same constants (`tests/unit/test_keepalive_contract.py`).
"""

from __future__ import annotations

PING_INTERVAL_MS = 10_000
"""How often a client pings an idle connection."""
PING_TIMEOUT_MS = 5_000
"""How long it waits for the answer before calling the peer dead."""
# The server accepts pings twice as often as the client sends them (slack for timer jitter)
# and never counts strikes against a client that pings within that.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

GrpcOptions = list[tuple[str, int]]


def client_options(interval_ms: int = PING_INTERVAL_MS) -> GrpcOptions:
    """Channel options of a client holding long-lived, possibly idle streams."""
    return [
        ("grpc.keepalive_time_ms", interval_ms),
        ("grpc.keepalive_timeout_ms", PING_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ]


def server_options(interval_ms: int = PING_INTERVAL_MS) -> GrpcOptions:
    """Server options that accept the pings of `client_options(interval_ms)` without GOAWAY."""
    return [
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", interval_ms // 2),
        ("grpc.http2.min_ping_interval_without_data_ms", interval_ms // 2),
        ("grpc.http2.max_ping_strikes", 0),
        ("grpc.keepalive_time_ms", interval_ms),
        ("grpc.keepalive_timeout_ms", PING_TIMEOUT_MS),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ]
