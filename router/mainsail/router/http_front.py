"""The OpenAI-compatible HTTP front: /v1/models, /v1/completions, /v1/chat/completions.

It only translates: JSON bodies become `GenerateRequest`s for `Router.open`, chunks become
OpenAI objects or SSE events. Errors before the first token are real HTTP statuses with
OpenAI error bodies; an error after streaming began arrives as an SSE `error` event followed
by `[DONE]`, which the `openai` SDK raises as an APIError.
"""

from __future__ import annotations

import abc
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.router.errors import RouterError, bad_request
from mainsail.router.openai_schema import (
    ChatCompletionRequest,
    CompletionRequest,
    parse_body,
)
from mainsail.router.route import Router, RouteStream

Handler = Callable[[Request], Awaitable[Response]]


def build_app(router: Router, ready: Callable[[], bool] | None = None) -> Starlette:
    """The ASGI app serving ``router``; ``ready`` decides /health (default: any worker)."""
    front = _HttpFront(router, ready or (lambda: len(router.registry) > 0))
    routes = [
        Route("/v1/models", front.models, methods=["GET"]),
        Route("/v1/completions", front.guard(front.completions), methods=["POST"]),
        Route("/v1/chat/completions", front.guard(front.chat), methods=["POST"]),
        Route("/health", front.health, methods=["GET"]),
        Route("/metrics", front.metrics, methods=["GET"]),
    ]
    app = Starlette(routes=routes)
    app.add_exception_handler(404, front.not_found)
    app.add_exception_handler(405, front.not_allowed)
    return app


class _HttpFront:
    def __init__(self, router: Router, ready: Callable[[], bool]) -> None:
        self.router = router
        self.ready = ready

    def guard(self, handler: Handler) -> Handler:
        async def wrapped(request: Request) -> Response:
            try:
                return await handler(request)
            except RouterError as exc:
                self.router.metrics.requests.labels("http", f"http_{exc.status}").inc()
                return JSONResponse(exc.body(), status_code=exc.status)

        return wrapped

    async def _json(self, request: Request) -> Any:
        limit = self.router.config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise RouterError(413, f"The request body exceeds {limit} bytes.")
        body = bytearray()
        async for part in request.stream():
            body += part
            if len(body) > limit:
                raise RouterError(413, f"The request body exceeds {limit} bytes.")
        try:
            return json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise bad_request(f"The request body is not valid JSON: {exc}") from None

    # ------------------------------------------------------------------ endpoints

    async def models(self, request: Request) -> Response:
        created = int(time.time())
        data = [
            {
                "id": m,
                "object": "model",
                "created": created,
                "owned_by": "mainsail",
                "max_model_len": self.router.config.max_model_len,
            }
            for m in self.router.served_models()
        ]
        return JSONResponse({"object": "list", "data": data})

    async def health(self, request: Request) -> Response:
        ok = self.ready()
        body = {"status": "ok" if ok else "no workers", "workers": len(self.router.registry)}
        return JSONResponse(body, status_code=200 if ok else 503)

    async def metrics(self, request: Request) -> Response:
        return Response(self.router.metrics.render(), media_type="text/plain; version=0.0.4")

    async def not_found(self, request: Request, exc: Exception) -> Response:
        err = RouterError(404, f"Unknown path {request.url.path}.", code="unknown_url")
        return JSONResponse(err.body(), status_code=404)

    async def not_allowed(self, request: Request, exc: Exception) -> Response:
        err = RouterError(405, f"Method {request.method} is not allowed on {request.url.path}.")
        return JSONResponse(err.body(), status_code=405)

    async def completions(self, request: Request) -> Response:
        body = parse_body(CompletionRequest, await self._json(request))
        req = _sampling_request(body)
        if isinstance(body.prompt, str):
            req.prompt = body.prompt
        elif body.prompt and isinstance(body.prompt[0], str):
            req.prompt = str(body.prompt[0])
        else:
            req.prompt_token_ids.extend(int(t) for t in body.prompt)
        if body.logprobs is not None:
            req.sampling.logprobs = max(body.logprobs, 1)
        route = await self.router.open(req)
        shaper = _CompletionShape(body.model, self.router, body.logprobs is not None)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return await self._respond(route, shaper, body.stream, include_usage)

    async def chat(self, request: Request) -> Response:
        body = parse_body(ChatCompletionRequest, await self._json(request))
        req = _sampling_request(body)
        if body.max_completion_tokens is not None:
            req.sampling.max_tokens = body.max_completion_tokens
        for message in body.messages:
            req.messages.add(role=message.role, content=message.text())
        if body.logprobs:
            req.sampling.logprobs = max(body.top_logprobs or 0, 1)
        route = await self.router.open(req)
        shaper = _ChatShape(body.model, self.router, body.logprobs)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return await self._respond(route, shaper, body.stream, include_usage)

    async def _respond(
        self, route: RouteStream, shaper: _Shape, stream: bool, include_usage: bool
    ) -> Response:
        responses = self.router.responses(route)
        if stream:
            return StreamingResponse(
                _sse(responses, shaper, include_usage),
                media_type="text/event-stream",
                headers={
                    "Cache-Control": "no-cache",
                    "X-Accel-Buffering": "no",
                    "X-Mainsail-Worker": route.worker_id,
                    "X-Request-Id": route.prepared.request_id,
                },
            )
        text: list[str] = []
        logprobs: list[pb.TokenLogprob] = []
        last = pb.GenerateResponse()
        async for response in responses:
            text.append(response.text)
            logprobs.extend(response.logprobs)
            last = response
        if last.finish_reason not in ("stop", "length"):
            self.router.metrics.requests.labels("http", "upstream_error").inc()
            err = RouterError(502, last.error or "generation failed", type="server_error")
            return JSONResponse(err.body(), status_code=502)
        self.router.metrics.requests.labels("http", "ok").inc()
        return JSONResponse(
            shaper.whole("".join(text), logprobs, last),
            headers={
                "X-Mainsail-Worker": route.worker_id,
                "X-Request-Id": route.prepared.request_id,
            },
        )


def _sampling_request(body: CompletionRequest | ChatCompletionRequest) -> pb.GenerateRequest:
    req = pb.GenerateRequest(
        model=body.model,
        adapter=body.adapter or "",
        slo_class=body.slo_class or "",
        priority=body.priority,
    )
    s = req.sampling
    if body.max_tokens is not None:
        s.max_tokens = body.max_tokens
    if body.temperature is not None:
        s.temperature = body.temperature
    if body.top_p is not None:
        s.top_p = body.top_p
    if body.top_k is not None and body.top_k > 0:
        s.top_k = body.top_k
    if body.seed is not None:
        s.seed = body.seed
    s.stop.extend(body.stop_list())
    s.ignore_eos = body.ignore_eos
    return req


async def _sse(
    responses: AsyncIterator[pb.GenerateResponse], shaper: _Shape, include_usage: bool
) -> AsyncIterator[bytes]:
    yield _event(shaper.opening())
    async for response in responses:
        if response.finish_reason in ("error", "abort"):
            err = RouterError(502, response.error or "generation failed", type="server_error")
            yield _event(err.body())
            break
        if response.text or response.finish_reason or response.logprobs:
            yield _event(shaper.delta(response))
        if response.finish_reason and include_usage:
            yield _event(shaper.usage_chunk(response))
    yield b"data: [DONE]\n\n"


def _event(obj: dict[str, Any] | None) -> bytes:
    if obj is None:
        return b""
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def _usage(usage: pb.Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    }


class _Shape(abc.ABC):
    """OpenAI object shapes for one endpoint."""

    object_whole = ""
    object_chunk = ""
    prefix = ""

    def __init__(self, model: str, router: Router, logprobs: bool) -> None:
        self.model = model
        self.router = router
        self.logprobs = logprobs
        self.id = f"{self.prefix}-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())

    def _frame(self, obj: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }

    def _token(self, token_id: int) -> str:
        return self.router.tokenizer.decode([token_id], skip_special_tokens=False)

    def opening(self) -> dict[str, Any] | None:
        return None

    def usage_chunk(self, response: pb.GenerateResponse) -> dict[str, Any]:
        frame = self._frame(self.object_chunk, [])
        frame["usage"] = _usage(response.usage)
        return frame

    @abc.abstractmethod
    def delta(self, response: pb.GenerateResponse) -> dict[str, Any]:
        """One streamed chunk."""

    @abc.abstractmethod
    def whole(
        self, text: str, logprobs: list[pb.TokenLogprob], last: pb.GenerateResponse
    ) -> dict[str, Any]:
        """The non-streamed response."""


class _CompletionShape(_Shape):
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

    def delta(self, response: pb.GenerateResponse) -> dict[str, Any]:
        choice = {
            "index": 0,
            "text": response.text,
            "logprobs": self._logprobs(list(response.logprobs)),
            "finish_reason": response.finish_reason or None,
        }
        return self._frame(self.object_chunk, [choice])

    def whole(
        self, text: str, logprobs: list[pb.TokenLogprob], last: pb.GenerateResponse
    ) -> dict[str, Any]:
        choice = {
            "index": 0,
            "text": text,
            "logprobs": self._logprobs(logprobs),
            "finish_reason": last.finish_reason,
        }
        frame = self._frame(self.object_whole, [choice])
        frame["usage"] = _usage(last.usage)
        return frame


class _ChatShape(_Shape):
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

    def opening(self) -> dict[str, Any]:
        choice = {
            "index": 0,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": None,
            "finish_reason": None,
        }
        return self._frame(self.object_chunk, [choice])

    def delta(self, response: pb.GenerateResponse) -> dict[str, Any]:
        delta = {"content": response.text} if response.text else {}
        choice = {
            "index": 0,
            "delta": delta,
            "logprobs": self._logprobs(list(response.logprobs)),
            "finish_reason": response.finish_reason or None,
        }
        return self._frame(self.object_chunk, [choice])

    def whole(
        self, text: str, logprobs: list[pb.TokenLogprob], last: pb.GenerateResponse
    ) -> dict[str, Any]:
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": self._logprobs(logprobs),
            "finish_reason": last.finish_reason,
        }
        frame = self._frame(self.object_whole, [choice])
        frame["usage"] = _usage(last.usage)
        return frame
