"""Streamed chunks rendered from pre-built bytes are exactly what rendering the whole object
with `json.dumps` gives (the fast path must not change what clients parse)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.router.front.openai_shapes import ChatShape, CompletionShape, Shape, sse_event
from mainsail.spec.tokenizer import Tokenizer

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def shapes(tiny_model_dir: Path) -> list[Shape]:
    tok = Tokenizer(tiny_model_dir)
    return [
        CompletionShape('m"odel\u00e9', tok, False, "req-1"),
        ChatShape("tiny:sql", tok, False, "req-2"),
    ]


@settings(max_examples=60, deadline=None)
@given(
    text=st.text(max_size=12),
    finish=st.sampled_from(["", "stop", "length"]),
)
def test_fast_delta_matches_json_dumps(shapes: list[Shape], text: str, finish: str) -> None:
    chunk = pb.TokenChunk(text=text, finish_reason=finish)
    for shape in shapes:
        assert shape.delta_event(chunk) == sse_event(shape.delta(chunk))


def test_ids_carry_the_request_id_and_chat_opens_with_role(shapes: list[Shape]) -> None:
    completion, chat = shapes
    assert completion.id == "cmpl-req-1" and chat.id == "chatcmpl-req-2"
    assert completion.opening() == b""
    opening = json.loads(chat.opening()[len(b"data: ") :])
    assert opening["choices"][0]["delta"] == {"role": "assistant", "content": ""}
