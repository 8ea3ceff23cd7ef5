"""The router's own HTTP/1.1 server on a real loopback socket: framing, keep-alive,
pipelining, body limits, streaming and cancellation (what uvicorn used to do for us)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from mainsail.router.front.http_server import HttpServer
from mainsail.router.front.http_wire import ChunkWriter, Request, Response, StreamResponse
from mainsail.router.server import bind_socket

pytestmark = pytest.mark.unit


class App:
    """Echoes the request; /stream streams three writes; /hang streams until cancelled."""

    def __init__(self) -> None:
        self.cancelled = asyncio.Event()

    async def __call__(self, request: Request) -> Response | StreamResponse:
        if request.path == "/stream":

            async def body(writer: ChunkWriter) -> None:
                writer.write(b"a")
                await writer.drain()
                writer.write(b"bb")
                writer.write(b"ccc", last=True)

            return StreamResponse(200, b"text/event-stream", [(b"x-k", b"v")], body)
        if request.path == "/hang":

            async def hang(writer: ChunkWriter) -> None:
                writer.write(b"first")
                try:
                    await asyncio.sleep(30)
                finally:
                    self.cancelled.set()

            return StreamResponse(200, b"text/plain", [], hang)
        if request.path == "/boom":
            raise RuntimeError("handler bug")
        text = f"{request.method} {request.path} {len(request.body)}".encode()
        return Response(200, text, b"text/plain")


@asynccontextmanager
async def serving(
    app: App, max_body: int = 100, keep_alive_s: float = 5.0
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    server = HttpServer(app, max_body_bytes=max_body, keep_alive_s=keep_alive_s)
    sock = bind_socket("127.0.0.1", 0)
    await server.start(sock)
    reader, writer = await asyncio.open_connection("127.0.0.1", sock.getsockname()[1])
    try:
        yield reader, writer
    finally:
        writer.close()
        await server.close()


async def read_response(reader: asyncio.StreamReader) -> tuple[bytes, dict[bytes, bytes], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
    status, *lines = head[:-4].split(b"\r\n")
    headers = dict(line.lower().split(b": ", 1) for line in lines)
    if b"content-length" in headers:
        return status, headers, await reader.readexactly(int(headers[b"content-length"]))
    body = b""
    while True:
        size = int((await reader.readuntil(b"\r\n"))[:-2], 16)
        data = await reader.readexactly(size + 2)
        if size == 0:
            return status, headers, body
        body += data[:-2]


async def test_keep_alive_and_pipelining_answer_in_order() -> None:
    async with serving(App()) as (reader, writer):
        writer.write(b"GET /one HTTP/1.1\r\nhost: x\r\n\r\n")
        status, _headers, body = await read_response(reader)
        assert status == b"HTTP/1.1 200 OK" and body == b"GET /one 0"
        writer.write(
            b"POST /two HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\nabc"
            b"GET /three?q=1 HTTP/1.1\r\nhost: x\r\n\r\n"
        )
        assert (await read_response(reader))[2] == b"POST /two 3"
        assert (await read_response(reader))[2] == b"GET /three 0"


async def test_chunked_request_body_and_expect_continue() -> None:
    async with serving(App()) as (reader, writer):
        writer.write(
            b"POST /c HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n"
            b"expect: 100-continue\r\n\r\n"
        )
        assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2) == (
            b"HTTP/1.1 100 Continue\r\n\r\n"
        )
        writer.write(b"2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n")
        assert (await read_response(reader))[2] == b"POST /c 5"


async def test_oversized_body_gets_413_and_close() -> None:
    async with serving(App(), max_body=10) as (reader, writer):
        writer.write(b"POST /big HTTP/1.1\r\nhost: x\r\ncontent-length: 20\r\n\r\n" + b"x" * 20)
        status, headers, body = await read_response(reader)
        assert status.startswith(b"HTTP/1.1 413")
        assert headers[b"connection"] == b"close"
        assert b"exceeds 10 bytes" in body
        assert await asyncio.wait_for(reader.read(), 2) == b""


async def test_malformed_request_gets_400() -> None:
    async with serving(App()) as (reader, writer):
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        status, _, body = await read_response(reader)
        assert status.startswith(b"HTTP/1.1 400") and b"Malformed" in body


async def test_streamed_body_is_chunked_and_head_has_no_body() -> None:
    async with serving(App()) as (reader, writer):
        writer.write(b"GET /stream HTTP/1.1\r\nhost: x\r\n\r\n")
        _status, headers, body = await read_response(reader)
        assert headers[b"transfer-encoding"] == b"chunked" and headers[b"x-k"] == b"v"
        assert body == b"abbccc"
        writer.write(b"HEAD /h HTTP/1.1\r\nhost: x\r\n\r\nGET /after HTTP/1.1\r\nhost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
        assert b"content-length: 9" in head  # "HEAD /h 0", body not sent
        assert (await read_response(reader))[2] == b"GET /after 0"


async def test_client_going_away_cancels_the_stream() -> None:
    app = App()
    async with serving(app) as (reader, writer):
        writer.write(b"GET /hang HTTP/1.1\r\nhost: x\r\n\r\n")
        await asyncio.wait_for(reader.readuntil(b"first\r\n"), 2)
        writer.close()
        await asyncio.wait_for(app.cancelled.wait(), 2)


async def test_idle_connection_is_closed_after_keep_alive() -> None:
    async with serving(App(), keep_alive_s=0.05) as (reader, writer):
        writer.write(b"GET /x HTTP/1.1\r\nhost: x\r\n\r\n")
        await read_response(reader)
        assert await asyncio.wait_for(reader.read(), 2) == b""


async def test_http10_stream_is_unframed_and_closes() -> None:
    async with serving(App()) as (reader, writer):
        writer.write(b"GET /stream HTTP/1.0\r\n\r\n")
        data = await asyncio.wait_for(reader.read(), 2)
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head and body == b"abbccc"


async def test_handler_bug_is_a_500_not_a_hang(caplog: pytest.LogCaptureFixture) -> None:
    async with serving(App()) as (reader, writer):
        writer.write(b"GET /boom HTTP/1.1\r\nhost: x\r\n\r\n")
        status, _, body = await read_response(reader)
    assert status.startswith(b"HTTP/1.1 500") and b"Internal error" in body
    assert "HTTP handler failed" in caplog.text


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="max_body_bytes"):
        HttpServer(App(), max_body_bytes=0)
