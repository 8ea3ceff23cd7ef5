"""Reading the OpenAI streaming format (server-sent events) as a client does.

Why a contract: the router writes `data: <json>` events ending with `data: [DONE]`
(`router/front/openai_shapes.py`), and the tests, the benchmarks and the simulator's live
harness all read them back. One reader means one notion of what a stream is: blank lines,
comments and other SSE fields are skipped, `[DONE]` ends the stream, anything else after
`data: ` must be JSON.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

DONE = "[DONE]"
"""The payload of the last event of a stream."""


def read_line(line: str | bytes) -> Any | None:
    """The payload of one SSE line: a decoded JSON value, `DONE`, or None for any line that
    is not `data:` (blank, a comment, `event:`). Raises ValueError for data that is not
    JSON."""
    text = line.decode() if isinstance(line, bytes) else line
    text = text.rstrip("\r\n")
    if not text.startswith("data:"):
        return None
    payload = text[len("data:") :].lstrip(" ")
    if payload == DONE:
        return DONE
    return json.loads(payload)


async def events(lines: AsyncIterable[str] | AsyncIterable[bytes]) -> AsyncIterator[Any]:
    """Every payload of a streamed body (JSON values, then `DONE`), from its lines (httpx's
    `aiter_lines()`, aiohttp's `content`)."""
    async for line in lines:
        payload = read_line(line)
        if payload is not None:
            yield payload


async def json_events(lines: AsyncIterable[str] | AsyncIterable[bytes]) -> AsyncIterator[Any]:
    """The JSON payloads only (what carries tokens, usage or an error); stops at `DONE`."""
    async for payload in events(lines):
        if payload == DONE:
            return
        yield payload


def body_events(body: str) -> list[Any]:
    """The payloads of a whole SSE body; ValueError when an event is not a `data:` event
    (the router sends nothing else)."""
    out: list[Any] = []
    for block in body.split("\n\n"):
        if not block.strip():
            continue
        payload = read_line(block)
        if payload is None:
            raise ValueError(f"not a data event: {block[:200]!r}")
        out.append(payload)
    return out
