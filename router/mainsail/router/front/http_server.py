"""A small HTTP/1.1 server for the router's front: asyncio protocol plus httptools' parser.

Why our own: with uvicorn and Starlette the router spent more CPU framing a streamed response
than routing it. This server does only what the front needs: keep-alive and pipelining (one
request handled at a time per connection, in order), request bodies up to a limit (413
beyond it), `Expect: 100-continue`, whole responses in one write, streamed responses with
chunked transfer encoding where the handler decides what goes into each write, back-pressure
(the handler's `drain` waits while the socket buffer is full), an idle keep-alive timeout, and
cancellation of the handler when the client goes away. Sockets come from
`server.bind_socket`, so they carry TCP_NODELAY.

Limits against clients that would hold resources (issue 12): the request line and headers
together may be at most `max_head_bytes` (431, counted as bytes arrive, before the parser
buffers a whole oversized header); a request's headers must arrive within `header_timeout`
and its body within `body_timeout` of the headers (408: a client dripping bytes cannot hold a
connection); at most `max_connections` connections are open (503 and close beyond).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections import deque
from http import HTTPStatus
from typing import cast

import httptools

from mainsail.router.front.http_wire import Handler, Request, Response, StreamResponse

log = logging.getLogger(__name__)

_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_LINGER_S = 1.0  # how long a refused connection's input is discarded before closing


def _error_body(status: int, message: str) -> bytes:
    err = {"message": message, "type": "invalid_request_error", "param": None, "code": None}
    return json.dumps({"error": err}).encode()


def _head(status: int, content_type: bytes, extra: list[tuple[bytes, bytes]]) -> list[bytes]:
    parts = [b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\n" % (status, _REASONS[status], content_type)]
    for key, value in extra:
        parts.append(key + b": " + value + b"\r\n")
    return parts


class _Connection(asyncio.Protocol):
    """One client connection: parses requests and runs them through the handler in order."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        # request, keep-alive, body too big, HTTP/1.1 (else 1.0: no chunked encoding)
        self.queue: deque[tuple[Request, bool, bool, bool]] = deque()
        self.started = False  # the current response's head is on the wire
        self.task: asyncio.Task[None] | None = None
        self.idle: asyncio.TimerHandle | None = None
        self.writable = asyncio.Event()
        self.writable.set()
        self.closed = False
        self.reading_paused = False
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._size = 0
        self._too_big = False
        self._in_head = True  # the bytes arriving belong to a request's head
        self._head_bytes = 0
        self._tail = b""  # last bytes seen in the head (a terminator split across reads)
        self.deadline: asyncio.TimerHandle | None = None  # header or body timeout

    # ---------------------------------------------------------------- transport callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if len(self.server.connections) >= self.server.max_connections:
            self.server.refused_connections += 1
            self._send_whole(
                Response(503, _error_body(503, "Too many open connections; retry later.")),
                "",
                False,
            )
            self.closed = True
            self.transport.close()
            return
        self.server.connections.add(self)
        self._arm_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        self.writable.set()
        if self.idle is not None:
            self.idle.cancel()
        self._clear_deadline()
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        if self.idle is not None:
            self.idle.cancel()
            self.idle = None
        if self._in_head and not self._head_fits(data):
            self._fail(431, f"The request head exceeds {self.server.max_head_bytes} bytes.")
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400, "Protocol upgrades are not supported.")
        except httptools.HttpParserError as exc:
            self._fail(400, f"Malformed HTTP request: {exc}.")

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    # ---------------------------------------------------------------- parser callbacks

    def _head_fits(self, data: bytes) -> bool:
        """Counts the head's bytes in ``data`` (up to its blank line); False past the limit."""
        end = (self._tail + data).find(b"\r\n\r\n")
        if end < 0:
            self._head_bytes += len(data)
            self._tail = data[-3:]
        else:
            self._head_bytes += max(0, end + 4 - len(self._tail))
            self._tail = b""
        return self._head_bytes <= self.server.max_head_bytes

    def _set_deadline(self, seconds: float, what: str) -> None:
        self._clear_deadline()
        loop = asyncio.get_running_loop()
        self.deadline = loop.call_later(seconds, self._deadline_passed, what)

    def _clear_deadline(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def _deadline_passed(self, what: str) -> None:
        self.deadline = None
        self.server.timed_out += 1
        self._fail(408, f"The request {what} did not arrive in time.")

    def on_message_begin(self) -> None:
        self._set_deadline(self.server.header_timeout, "headers")
        self._url = b""
        self._headers = []
        self._body = []
        self._size = 0
        self._too_big = False

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._set_deadline(self.server.body_timeout, "body")
        expect = False
        for key, value in self._headers:
            if key == b"content-length" and value.isdigit():
                self._too_big = int(value) > self.server.max_body_bytes
            elif key == b"expect" and value.lower() == b"100-continue":
                expect = True
        if expect and not self._too_big and self.transport is not None:
            self.transport.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        if self._too_big:
            return
        self._size += len(body)
        if self._size > self.server.max_body_bytes:
            self._too_big = True
            self._body = []
        else:
            self._body.append(body)

    def on_message_complete(self) -> None:
        self._clear_deadline()
        self._in_head = True
        self._head_bytes = 0
        self._tail = b""
        path = self._url.partition(b"?")[0].decode("latin-1")
        method = self.parser.get_method().decode("latin-1")
        request = Request(method, path, self._headers, b"".join(self._body))
        http11 = self.parser.get_http_version() != "1.0"
        self.queue.append((request, self.parser.should_keep_alive(), self._too_big, http11))
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._run())
        if len(self.queue) > 8 and self.transport is not None and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()  # a client pipelining far ahead waits for us

    # ---------------------------------------------------------------- request handling

    async def _run(self) -> None:
        transport = self.transport
        assert transport is not None
        try:
            while self.queue and not self.closed:
                if self.reading_paused and len(self.queue) <= 8:
                    self.reading_paused = False
                    transport.resume_reading()
                request, keep_alive, too_big, http11 = self.queue.popleft()
                self.started = False
                if too_big:
                    limit = self.server.max_body_bytes
                    body = _error_body(413, f"The request body exceeds {limit} bytes.")
                    self._send_whole(Response(413, body), request.method, keep_alive=False)
                    keep_alive = False
                else:
                    response = await self.server.handler(request)
                    if isinstance(response, StreamResponse):
                        keep_alive = keep_alive and http11
                        await self._send_stream(response, keep_alive, http11)
                    else:
                        self._send_whole(response, request.method, keep_alive)
                if not keep_alive:
                    self.closed = True
                    transport.close()
                    return
        except asyncio.CancelledError:
            transport.close()
            raise
        except Exception:
            log.exception("HTTP handler failed")
            if not self.closed and not self.started:
                self._send_whole(Response(500, _error_body(500, "Internal error.")), "", False)
            self.closed = True
            transport.close()
            return
        finally:
            self.task = None
        self._arm_idle()

    def _send_whole(self, response: Response, method: str, keep_alive: bool) -> None:
        assert self.transport is not None
        parts = _head(response.status, response.content_type, response.headers)
        parts.append(b"content-length: %d\r\n" % len(response.body))
        if not keep_alive:
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        if method != "HEAD":
            parts.append(response.body)
        self.transport.write(b"".join(parts))

    async def _send_stream(self, response: StreamResponse, keep_alive: bool, chunked: bool) -> None:
        parts = _head(response.status, response.content_type, response.headers)
        if chunked:
            parts.append(b"transfer-encoding: chunked\r\n")
        if not keep_alive:
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        writer = _ChunkWriter(self, b"".join(parts), chunked)
        await response.body(writer)
        if not writer.ended:
            writer.write(b"", last=True)

    def _fail(self, status: int, message: str) -> None:
        if self.transport is None or self.closed:
            return
        self._clear_deadline()
        self.closed = True
        if self.task is not None:
            self.transport.close()
            return
        self._send_whole(Response(status, _error_body(status, message)), "", False)
        # Lingering close: closing with unread input would reset the connection and lose the
        # answer; so stop writing, discard what still arrives (`data_received` ignores a
        # closed connection) and close shortly after.
        if self.transport.can_write_eof():
            self.transport.write_eof()
        asyncio.get_running_loop().call_later(_LINGER_S, self.transport.close)

    def _arm_idle(self) -> None:
        if self.closed or self.transport is None:
            return
        loop = asyncio.get_running_loop()
        self.idle = loop.call_later(self.server.keep_alive_s, self._idle_close)

    def _idle_close(self) -> None:
        if self.task is None and self.transport is not None:
            self.closed = True
            self.transport.close()


class _ChunkWriter:
    """Chunked framing of a streamed body; the status line rides on the first write."""

    __slots__ = ("chunked", "conn", "ended", "head")

    def __init__(self, conn: _Connection, head: bytes, chunked: bool) -> None:
        self.conn = conn
        self.head = head
        self.chunked = chunked
        self.ended = False

    def write(self, data: bytes, last: bool = False) -> None:
        if self.ended:
            raise RuntimeError("write after the last chunk")
        conn = self.conn
        if conn.closed or conn.transport is None:
            return
        frame = [self.head] if self.head else []
        self.head = b""
        conn.started = True
        if not self.chunked:  # HTTP/1.0: the body ends when the connection closes
            frame.append(data)
            self.ended = last
        else:
            if data:
                frame += [b"%x\r\n" % len(data), data, b"\r\n"]
            if last:
                frame.append(b"0\r\n\r\n")
                self.ended = True
        conn.transport.write(b"".join(frame))

    async def drain(self) -> None:
        if not self.conn.writable.is_set():
            await self.conn.writable.wait()


class HttpServer:
    """Serves ``handler`` on a listening socket until `close`."""

    def __init__(
        self,
        handler: Handler,
        *,
        max_body_bytes: int,
        keep_alive_s: float = 30.0,
        max_head_bytes: int = 64 * 1024,
        header_timeout: float = 10.0,
        body_timeout: float = 60.0,
        max_connections: int = 4096,
    ) -> None:
        if max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be >= 1, got {max_body_bytes}")
        for name, value in (
            ("keep_alive_s", keep_alive_s),
            ("header_timeout", header_timeout),
            ("body_timeout", body_timeout),
            ("max_head_bytes", max_head_bytes),
            ("max_connections", max_connections),
        ):
            if value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        self.handler = handler
        self.max_body_bytes = max_body_bytes
        self.keep_alive_s = keep_alive_s
        self.max_head_bytes = max_head_bytes
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.max_connections = max_connections
        self.refused_connections = 0  # over max_connections
        self.timed_out = 0  # requests whose head or body did not arrive in time
        self.connections: set[_Connection] = set()
        self._server: asyncio.Server | None = None

    async def start(self, sock: socket.socket) -> None:
        """Accept connections on ``sock`` (already bound and listening)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), sock=sock)

    async def close(self) -> None:
        """Stop accepting and drop every connection (in-flight streams are cancelled)."""
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()
            if conn.task is not None:
                conn.task.cancel()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None
