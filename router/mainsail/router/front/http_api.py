"""The OpenAI-compatible HTTP front: /v1/models, /v1/completions, /v1/chat/completions.

It only translates: JSON bodies become `GenerateRequest`s for `Router.open`, chunks become
OpenAI objects or SSE events. Errors before the first token are real HTTP statuses with
OpenAI error bodies; an error after streaming began arrives as an SSE `error` event followed
by `[DONE]`, which the `openai` SDK raises as an APIError. A streamed response makes one
socket write per worker message (its events, and on the last one `[DONE]` and the end of the
body), so a worker that sends several ready tokens at once costs one write, not several.
Served by `mainsail.router.front.http_server`; also /health (200 once serving, with or without
workers: a router whose pools are scaled to zero holds requests and must stay Ready)
and /metrics (Prometheus text). The admin endpoints (/workers, drain, expert parallelism,
migration) are `admin_api.AdminApi`'s: this front checks their token first, as it checks
client keys for /v1/, and dispatches to them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from contextlib import aclosing

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.router.errors import RouterError, bad_request
from mainsail.router.front.admin_api import AdminApi
from mainsail.router.front.auth import Credentials
from mainsail.router.front.http_wire import (
    ChunkWriter,
    Request,
    Response,
    StreamResponse,
    json_body,
    json_response,
)
from mainsail.router.front.openai_schema import ChatCompletionRequest, CompletionRequest, parse_body
from mainsail.router.front.openai_shapes import ChatShape, CompletionShape, Shape, sse_event
from mainsail.router.routing.router import Router, RouteStream

Endpoint = Callable[[Request], Awaitable[Response | StreamResponse]]
_DONE = b"data: [DONE]\n\n"
_SSE = b"text/event-stream"


class HttpFront:
    """Request → response for every path; the server calls `handle`."""

    def __init__(
        self,
        router: Router,
        ready: Callable[[], bool] | None = None,
        credentials: Credentials | None = None,
    ) -> None:
        self.router = router
        self.credentials = credentials or Credentials()
        # Ready once serving, workers or not: a router with no worker registered holds requests
        # for pools scaled to zero (see routing/choose.py), so it must stay reachable.
        self.ready = ready or (lambda: True)
        self.admin = AdminApi(router, self.credentials)
        self.routes: dict[str, dict[str, Endpoint]] = {
            "/v1/models": {"GET": self.models},
            "/v1/completions": {"POST": self.completions},
            "/v1/chat/completions": {"POST": self.chat},
            "/health": {"GET": self.health},
            "/metrics": {"GET": self.metrics},
        }
        self._http_errors = {
            status: router.metrics.requests.labels("http", f"http_{status}")
            for status in (400, 404, 413, 429, 502, 503)
        }

    async def handle(self, request: Request) -> Response | StreamResponse:
        """Dispatch ``request``; refusals become OpenAI error bodies with their status."""
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        methods = self.routes.get(request.path)
        if methods is None and self.admin.owns(request.path):
            methods = self.admin.endpoints(request.path)
        if methods is None:
            err = RouterError(404, f"Unknown path {request.path}.", code="unknown_url")
            return json_response(err.body(), 404)
        endpoint = methods.get(request.method)
        if endpoint is None and request.method == "HEAD":
            endpoint = methods.get("GET")
        if endpoint is None:
            msg = f"Method {request.method} is not allowed on {request.path}."
            allow = ", ".join(methods).encode()
            return json_response(RouterError(405, msg).body(), 405, [(b"allow", allow)])
        try:
            return await endpoint(request)
        except RouterError as exc:
            counter = self._http_errors.get(exc.status)
            if counter is None:
                counter = self.router.metrics.requests.labels("http", f"http_{exc.status}")
            counter.inc()
            return json_response(exc.body(), exc.status, exc.headers())

    def _refusal(self, request: Request) -> Response | None:
        """401 when the path needs credentials the request lacks, 403 for an admin path of a
        router without an admin token (see `auth.py`, `admin_api.py`)."""
        path = request.path
        raw = request.header(b"authorization")
        authorization = raw.decode("latin-1") if raw is not None else None
        if path.startswith("/v1/"):
            if self.credentials.client_allowed(authorization):
                return None
            message = "Incorrect or missing API key: send `Authorization: Bearer <key>`."
            err: RouterError | None = RouterError(401, message, code="invalid_api_key")
        elif self.admin.owns(path):
            err = self.admin.refusal(authorization)
        else:
            return None
        if err is None:
            return None
        self.router.metrics.requests.labels("http", f"http_{err.status}").inc()
        challenge = [(b"www-authenticate", b"Bearer")] if err.status == 401 else []
        return json_response(err.body(), err.status, challenge)

    # ------------------------------------------------------------------ plain endpoints

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
        return json_response({"object": "list", "data": data})

    async def health(self, request: Request) -> Response:
        ok = self.ready()
        body = {"status": "ok" if ok else "not ready", "workers": len(self.router.registry)}
        return json_response(body, 200 if ok else 503)

    async def metrics(self, request: Request) -> Response:
        return Response(200, self.router.metrics.render(), b"text/plain; version=0.0.4")

    # ------------------------------------------------------------------ generation

    async def completions(self, request: Request) -> Response | StreamResponse:
        trace = self.router.tracing.begin("http", request.headers, request.path)
        try:
            body, req = self._completion_request(request)
        except RouterError as exc:
            trace.refused(exc)  # the front span says which field, never the body
            raise
        route = await self.router.open(req, tenant=self._tenant(request), trace=trace)
        shape = CompletionShape(
            body.model, self.router.tokenizer, body.logprobs is not None, route.prepared.request_id
        )
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return await self._respond(route, shape, body.stream, include_usage)

    async def chat(self, request: Request) -> Response | StreamResponse:
        trace = self.router.tracing.begin("http", request.headers, request.path)
        try:
            body, req = self._chat_request(request)
        except RouterError as exc:
            trace.refused(exc)
            raise
        route = await self.router.open(req, tenant=self._tenant(request), trace=trace)
        shape = ChatShape(
            body.model, self.router.tokenizer, body.logprobs, route.prepared.request_id
        )
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return await self._respond(route, shape, body.stream, include_usage)

    def _completion_request(self, request: Request) -> tuple[CompletionRequest, pb.GenerateRequest]:
        """The parsed body and the request it asks for; `RouterError` (400) naming the field."""
        body = parse_body(CompletionRequest, json_body(request))
        req = _sampling_request(body)
        if isinstance(body.prompt, str):
            req.prompt = body.prompt
        elif body.prompt and isinstance(body.prompt[0], str):
            req.prompt = str(body.prompt[0])
        else:
            req.prompt_token_ids.extend(int(t) for t in body.prompt)
        if body.logprobs is not None:
            req.sampling.logprobs = max(body.logprobs, 1)
        return body, self._labelled(req, request)

    def _chat_request(self, request: Request) -> tuple[ChatCompletionRequest, pb.GenerateRequest]:
        """The parsed body and the request it asks for; `RouterError` (400) naming the field."""
        body = parse_body(ChatCompletionRequest, json_body(request))
        req = _sampling_request(body)
        if body.max_completion_tokens is not None:
            req.sampling.max_tokens = body.max_completion_tokens
        for message in body.messages:
            req.messages.add(role=message.role, content=message.text())
        if body.logprobs:
            req.sampling.logprobs = max(body.top_logprobs or 0, 1)
        return body, self._labelled(req, request)

    def _tenant(self, request: Request) -> str:
        """The request's tenant (its prefix-cache namespace; `auth.Credentials.tenant`)."""
        raw = request.header(b"authorization")
        mapped = None
        if self.credentials.tenant_header:
            value = request.header(self.credentials.tenant_header.encode())
            mapped = value.decode("latin-1") if value is not None else None
        return self.credentials.tenant(raw.decode("latin-1") if raw is not None else None, mapped)

    @staticmethod
    def _labelled(req: pb.GenerateRequest, request: Request) -> pb.GenerateRequest:
        """The client's `X-Request-Id` (kept as a label only: the router assigns the id), its
        latency targets and fairness id from the `x-mainsail-*` headers (docs/scheduling.md)."""
        raw = request.header(b"x-request-id")
        if raw is not None:
            req.request_id = raw.decode("latin-1")
        for header, name in _TARGET_HEADERS:
            value = request.header(header)
            if value is not None:
                setattr(req, name, _milliseconds(header.decode(), value))
        fairness = request.header(b"x-mainsail-fairness-id")
        if fairness is not None:
            req.fairness_id = fairness.decode("latin-1").strip()
        return req

    async def _respond(
        self, route: RouteStream, shape: Shape, stream: bool, include_usage: bool
    ) -> Response | StreamResponse:
        headers = [
            (b"x-mainsail-worker", route.worker_id.encode()),
            (b"x-request-id", route.prepared.request_id.encode()),
        ]
        if route.prepared.client_label:
            headers.append((b"x-client-request-id", route.prepared.client_label.encode()))
        if stream:
            headers += [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]

            async def body(writer: ChunkWriter) -> None:
                await self._stream(route, shape, include_usage, writer)

            return StreamResponse(200, _SSE, headers, body)
        text: list[str] = []
        logprobs: list[pb.TokenLogprob] = []
        last = pb.TokenChunk()
        async with aclosing(self.router.chunks(route)) as chunks:
            async for chunk in chunks:
                text.append(chunk.text)
                logprobs.extend(chunk.logprobs)
                last = chunk
        if last.finish_reason not in ("stop", "length"):
            self.router.metrics.requests.labels("http", "upstream_error").inc()
            err = RouterError(502, last.error or "generation failed", type="server_error")
            return json_response(err.body(), 502)
        self.router.metrics.requests.labels("http", "ok").inc()
        return json_response(shape.whole("".join(text), logprobs, last), headers=headers)

    async def _stream(
        self, route: RouteStream, shape: Shape, include_usage: bool, writer: ChunkWriter
    ) -> None:
        """The SSE body: one write per worker message, `[DONE]` with the last."""
        out = [shape.opening()]
        async with aclosing(self.router.chunks(route)) as chunks:
            async for chunk in chunks:
                finish = chunk.finish_reason
                if finish == "error" or finish == "abort":
                    err = RouterError(502, chunk.error or "generation failed", type="server_error")
                    out.append(sse_event(err.body()))
                    break
                if chunk.text or finish or chunk.logprobs:
                    out.append(shape.delta_event(chunk))
                if finish:
                    if include_usage:
                        out.append(shape.usage_event(chunk))
                    break
                writer.write(b"".join(out))
                out.clear()
                await writer.drain()
            # The end of the body goes out before the route's clean-up (closing `chunks`).
            out.append(_DONE)
            writer.write(b"".join(out), last=True)


_TARGET_HEADERS = ((b"x-mainsail-ttft-ms", "ttft_ms"), (b"x-mainsail-tpot-ms", "tpot_ms"))


def _milliseconds(header: str, raw: bytes) -> float:
    """A positive, finite number of milliseconds from a header, else 400 naming it."""
    try:
        value = float(raw.decode("latin-1").strip())
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value <= 0:
        raise bad_request(f"{header} must be a positive number of milliseconds.", param=header)
    return value


def _sampling_request(body: CompletionRequest | ChatCompletionRequest) -> pb.GenerateRequest:
    req = pb.GenerateRequest(
        model=body.model,
        adapter=body.adapter or "",
        slo_class=body.slo_class or "",
        priority=body.priority,
        ttft_ms=body.ttft_ms or 0.0,
        tpot_ms=body.tpot_ms or 0.0,
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
