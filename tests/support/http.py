"""The router's real HTTP server on a loopback port with a client for it, and an SSE parser:
shared by the HTTP front, migration and auth tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from mainsail.router.front.auth import Credentials
from mainsail.router.front.http_api import HttpFront
from mainsail.router.front.http_server import HttpServer
from mainsail.router.routing.router import Router
from mainsail.router.server import bind_socket
from mainsail.spec.sse import body_events


@asynccontextmanager
async def serving(
    router: Router, credentials: Credentials | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """`HttpServer(HttpFront(router))` on a free loopback port, and a client for it."""
    front = HttpFront(router, credentials=credentials)
    server = HttpServer(front.handle, max_body_bytes=router.config.max_body_bytes)
    sock = bind_socket("127.0.0.1", 0)
    await server.start(sock)
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=5) as http:
            yield http
    finally:
        await server.close()


def sse_events(body: str) -> list[Any]:
    """The `data:` payloads of an SSE body, JSON-decoded (`[DONE]` kept as the string)."""
    return body_events(body)
