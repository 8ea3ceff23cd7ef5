"""`mainsail.spec.sse`, the one SSE reader (tests, bench, the simulator's live harness), reads
back exactly what the router's front writes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from mainsail.router.front.openai_shapes import sse_event
from mainsail.spec import sse

pytestmark = pytest.mark.unit

EVENTS: list[dict[str, Any]] = [
    {"id": "a", "choices": [{"text": "x"}]},
    {"usage": {"prompt_tokens": 3}},
]
BODY = b"".join(sse_event(e) for e in EVENTS) + b"data: [DONE]\n\n"


async def _lines(items: list[bytes]) -> AsyncIterator[bytes]:
    for item in items:
        yield item


def test_a_rendered_body_reads_back_event_for_event() -> None:
    assert sse.body_events(BODY.decode()) == [*EVENTS, sse.DONE]


async def test_lines_as_httpx_and_aiohttp_give_them() -> None:
    text_lines = BODY.decode().split("\n")  # httpx: no line endings, blank lines included
    as_text = [p async for p in sse.events(_lines([ln.encode() for ln in text_lines]))]
    raw = [ln + b"\n" for ln in BODY.split(b"\n")[:-1]]  # aiohttp: bytes with "\n"
    as_bytes = [p async for p in sse.events(_lines(raw))]
    assert as_text == as_bytes == [*EVENTS, sse.DONE]
    assert [p async for p in sse.json_events(_lines([*raw, b'data: {"late":1}\n']))] == EVENTS


def test_other_fields_are_skipped_and_bad_data_is_an_error() -> None:
    assert sse.read_line(": keep-alive") is None
    assert sse.read_line("event: ping") is None
    assert sse.read_line("data:[DONE]\r\n") == sse.DONE
    with pytest.raises(ValueError):
        sse.read_line("data: {not json")
    with pytest.raises(ValueError, match="not a data event"):
        sse.body_events("event: ping\n\n")
