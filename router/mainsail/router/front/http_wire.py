"""What the HTTP front and the HTTP server exchange: one parsed request, one response.

Why not ASGI: the router serves a handful of endpoints whose hot path is one streamed
response per request, and the ASGI stack (message dicts per body part, a task group per
streamed response, middleware) cost more CPU per request than routing did. The front returns
either a whole `Response` or a `StreamResponse` whose body callback writes bytes to a
`ChunkWriter`; `mainsail.router.front.http_server` frames them on the socket.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from mainsail.router.errors import bad_request

Headers = list[tuple[bytes, bytes]]


@dataclass(slots=True)
class Request:
    """One parsed HTTP request; header names are lower-case."""

    method: str
    path: str
    headers: Headers
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (lower-case), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


@dataclass(slots=True)
class Response:
    """A whole response: status, body and extra headers (content-length is added)."""

    status: int
    body: bytes
    content_type: bytes = b"application/json"
    headers: Headers = field(default_factory=list)


class ChunkWriter(Protocol):
    """Where a streamed body goes; each `write` is one socket write."""

    def write(self, data: bytes, last: bool = False) -> None:
        """Send ``data`` now; ``last`` ends the body in the same write."""
        ...

    async def drain(self) -> None:
        """Wait while the client reads slower than we write."""
        ...


@dataclass(slots=True)
class StreamResponse:
    """A streamed (chunked) response; ``body`` writes it and must end with ``last=True``."""

    status: int
    content_type: bytes
    headers: Headers
    body: Callable[[ChunkWriter], Awaitable[None]]


Handler = Callable[[Request], Awaitable[Response | StreamResponse]]


def json_response(obj: Any, status: int = 200, headers: Headers | None = None) -> Response:
    """``obj`` as a compact JSON response."""
    body = json.dumps(obj, separators=(",", ":")).encode()
    return Response(status, body, b"application/json", headers or [])


def json_body(request: Request) -> object:
    """``request``'s body parsed as JSON; `RouterError` (400) saying why it is not JSON. (The
    server refuses bodies over ``max_body_bytes`` with 413 before a front reads them.)"""
    try:
        return json.loads(request.body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise bad_request(f"The request body is not valid JSON: {exc}") from None
