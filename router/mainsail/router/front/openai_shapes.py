"""OpenAI response objects for /v1/completions and /v1/chat/completions, whole or streamed.

Streamed chunks without logprobs are the hot path (one per worker message), so each request
pre-renders the bytes around the text once and a chunk costs one `json.dumps` of its text;
the output is byte-identical to rendering the full object with `json.dumps` (a unit test
checks it). Anything rarer (logprobs, usage, errors, whole responses) goes through dicts.
"""

from __future__ import annotations

import abc
import json
import time
from typing import Any

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.spec.tokenizer import Tokenizer

_NULL_END = b',"logprobs":null,"finish_reason":null}]}\n\n'


def sse_event(obj: dict[str, Any]) -> bytes:
    """One server-sent event carrying ``obj`` as compact JSON."""
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def usage_dict(usage: pb.Usage) -> dict[str, Any]:
    """OpenAI `usage` from the wire's."""
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    }


class Shape(abc.ABC):
    """OpenAI object shapes for one endpoint and one request."""

    object_whole = ""
    object_chunk = ""
    prefix = ""

    def __init__(self, model: str, tokenizer: Tokenizer, logprobs: bool, request_id: str) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.logprobs = logprobs
        self.id = f"{self.prefix}-{request_id}"  # the X-Request-Id, so logs and clients match
        self.created = int(time.time())
        self._head = (
            b'data: {"id":%s,"object":%s,"created":%d,"model":%s,"choices":[{"index":0,'
            % (
                json.dumps(self.id).encode(),
                json.dumps(self.object_chunk).encode(),
                self.created,
                json.dumps(model).encode(),
            )
        )

    def _frame(self, obj: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }

    def _whole_frame(
        self, body: dict[str, Any], logprobs: list[pb.TokenLogprob], last: pb.TokenChunk
    ) -> dict[str, Any]:
        """A non-streamed response: one choice holding ``body``, with usage."""
        choice = {
            "index": 0,
            **body,
            "logprobs": self._logprobs(logprobs),
            "finish_reason": last.finish_reason,
        }
        frame = self._frame(self.object_whole, [choice])
        frame["usage"] = usage_dict(last.usage)
        return frame

    def _token(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id], skip_special_tokens=False)

    @staticmethod
    def _end(finish_reason: str) -> bytes:
        if not finish_reason:
            return _NULL_END
        return b',"logprobs":null,"finish_reason":%s}]}\n\n' % json.dumps(finish_reason).encode()

    def opening(self) -> bytes:
        """The event sent before any token (none by default)."""
        return b""

    def usage_event(self, chunk: pb.TokenChunk) -> bytes:
        """The trailing usage event (`stream_options.include_usage`)."""
        frame = self._frame(self.object_chunk, [])
        frame["usage"] = usage_dict(chunk.usage)
        return sse_event(frame)

    def delta_event(self, chunk: pb.TokenChunk) -> bytes:
        """One streamed chunk as an SSE event."""
        if self.logprobs:
            return sse_event(self.delta(chunk))
        return self._head + self._fast_delta(chunk.text) + self._end(chunk.finish_reason)

    @abc.abstractmethod
    def _fast_delta(self, text: str) -> bytes:
        """The choice's text field(s), rendered."""

    @abc.abstractmethod
    def _logprobs(self, items: list[pb.TokenLogprob]) -> dict[str, Any] | None:
        """The choice's `logprobs` object (None unless the request asked for them)."""

    @abc.abstractmethod
    def delta(self, chunk: pb.TokenChunk) -> dict[str, Any]:
        """One streamed chunk as an object."""

    @abc.abstractmethod
    def whole(
        self, text: str, logprobs: list[pb.TokenLogprob], last: pb.TokenChunk
    ) -> dict[str, Any]:
        """The non-streamed response."""


class CompletionShape(Shape):
    """`text_completion` objects."""

    object_whole = object_chunk = "text_completion"
    prefix = "cmpl"

    def _logprobs(self, items: list[pb.TokenLogprob]) -> dict[str, Any] | None:
        if not self.logprobs:
            return None
        return {
            "tokens": [self._token(i.token_id) for i in items],
            "token_logprobs": [i.logprob for i in items],
            "top_logprobs": [
                {self._token(t): lp for t, lp in zip(i.top_token_ids, i.top_logprobs, strict=False)}
                for i in items
            ],
            "text_offset": [],
        }

    def _fast_delta(self, text: str) -> bytes:
        return b'"text":' + json.dumps(text).encode()

    def delta(self, chunk: pb.TokenChunk) -> dict[str, Any]:
        choice = {
            "index": 0,
            "text": chunk.text,
            "logprobs": self._logprobs(list(chunk.logprobs)),
            "finish_reason": chunk.finish_reason or None,
        }
        return self._frame(self.object_chunk, [choice])

    def whole(
        self, text: str, logprobs: list[pb.TokenLogprob], last: pb.TokenChunk
    ) -> dict[str, Any]:
        return self._whole_frame({"text": text}, logprobs, last)


class ChatShape(Shape):
    """`chat.completion` objects; a stream opens with the assistant role."""

    object_whole = "chat.completion"
    object_chunk = "chat.completion.chunk"
    prefix = "chatcmpl"

    def _logprobs(self, items: list[pb.TokenLogprob]) -> dict[str, Any] | None:
        if not self.logprobs:
            return None
        content = []
        for i in items:
            token = self._token(i.token_id)
            tops = [
                {"token": self._token(t), "logprob": lp, "bytes": list(self._token(t).encode())}
                for t, lp in zip(i.top_token_ids, i.top_logprobs, strict=False)
            ]
            content.append(
                {
                    "token": token,
                    "logprob": i.logprob,
                    "bytes": list(token.encode()),
                    "top_logprobs": tops,
                }
            )
        return {"content": content}

    def opening(self) -> bytes:
        choice = {
            "index": 0,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": None,
            "finish_reason": None,
        }
        return sse_event(self._frame(self.object_chunk, [choice]))

    def _fast_delta(self, text: str) -> bytes:
        if not text:
            return b'"delta":{}'
        return b'"delta":{"content":' + json.dumps(text).encode() + b"}"

    def delta(self, chunk: pb.TokenChunk) -> dict[str, Any]:
        delta = {"content": chunk.text} if chunk.text else {}
        choice = {
            "index": 0,
            "delta": delta,
            "logprobs": self._logprobs(list(chunk.logprobs)),
            "finish_reason": chunk.finish_reason or None,
        }
        return self._frame(self.object_chunk, [choice])

    def whole(
        self, text: str, logprobs: list[pb.TokenLogprob], last: pb.TokenChunk
    ) -> dict[str, Any]:
        message = {"role": "assistant", "content": text}
        return self._whole_frame({"message": message}, logprobs, last)
