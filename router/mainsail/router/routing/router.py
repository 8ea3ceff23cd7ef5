"""`Router`: the one request path both fronts call — validate, admit, dispatch, stream.

`Router.open` does everything that can fail *before* the first token — validation (400/404),
admission (429), choosing a worker (503 after `dispatch_timeout`), and fail-over to another
worker when the chosen one breaks before producing anything (`dispatch.py`) — so the HTTP
front can still answer with a proper status code. The returned `RouteStream` yields the rest.

A worker that dies *after* the first token costs the request nothing: the request moves to
another worker, which continues it from the tokens already streamed (`moves.py`, also behind
`migrate`, `drain`, rebalancing and the decode half of disaggregated requests). Only when no
worker takes it within `resume_timeout`, or after `max_resumes` moves, does the stream end
with `finish_reason="error"` — never a hang.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.router.errors import (
    RouterError,
    TransportError,
    WorkerRefused,
    bad_request,
    not_found,
)
from mainsail.router.fleet.registry import WorkerRegistry
from mainsail.router.fleet.transport import WorkerTransport
from mainsail.router.kvindex import ApproximateIndex, KVIndex
from mainsail.router.metrics import RouteLatency, RouterMetrics
from mainsail.router.routing.bounded_pool import BoundedPool
from mainsail.router.routing.choose import WorkerChooser
from mainsail.router.routing.dispatch import Dispatcher
from mainsail.router.routing.moves import RequestMover
from mainsail.router.routing.prepare import Prepared, RequestPreparer
from mainsail.router.routing.rebalance import Move
from mainsail.router.routing.route_stream import RouteStream, close_stream, nothing
from mainsail.router.scheduling import ROLES, SchedulingProfile
from mainsail.router.scheduling.flow import FlowLimits
from mainsail.router.settings import RouterConfig
from mainsail.router.tracing import NO_TRACE, AttributeValue, RequestTrace, RouterTracing
from mainsail.spec.tokenizer import Tokenizer


class Router:
    """Validation, admission and dispatch over an injected transport (composed of a
    `WorkerChooser`, a `Dispatcher` and a `RequestMover`)."""

    def __init__(
        self,
        config: RouterConfig,
        tokenizer: Tokenizer,
        registry: WorkerRegistry,
        transport: WorkerTransport,
        profile: SchedulingProfile,
        index: KVIndex,
        metrics: RouterMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        approx: ApproximateIndex | None = None,
        publishes_events: Callable[[str], bool] = lambda worker_id: True,
        tracing: RouterTracing | None = None,
    ) -> None:
        self.config = config
        self.tracing = tracing or RouterTracing(config.tracing)
        self.tokenizer = tokenizer
        self.registry = registry
        self.transport = transport
        self.metrics = metrics or RouterMetrics()
        self._clock = clock
        self.preparer = RequestPreparer(config, tokenizer)
        limits = FlowLimits(config.max_queue, config.flow.max_per_band, config.flow.max_per_tenant)
        self.chooser = WorkerChooser(
            registry,
            profile,
            index,
            self.metrics,
            clock,
            approx,
            publishes_events,
            limits,
            config.admission,
            config.kv_hash.block_size,
        )
        self.dispatcher = Dispatcher(
            registry, transport, self.chooser, self.metrics, config.kv_hash.block_size, clock
        )
        self.moves = RequestMover(config, registry, transport, self.dispatcher, self.metrics)
        self._outcome_metric: dict[str, Any] = {}
        self._slo_names = frozenset(c.name for c in config.slo.classes)
        # The plain requests' series exist (at zero) from the start, so rates and the
        # dashboard work before the first request.
        self.metrics.latency(config.model_name, config.request_role, "none")
        self.preparing = BoundedPool(
            config.prepare_threads, config.max_preparing, name="mainsail-prepare"
        )

    # ------------------------------------------------------------------ validation

    def served_models(self) -> list[str]:
        """Model ids clients may name: the base model and `<model>:<adapter>`."""
        return self.preparer.served_models()

    def prepare(self, request: pb.GenerateRequest, tenant: str = "") -> Prepared:
        """Check and tokenize ``request``; raises RouterError (4xx) naming what is wrong."""
        return self.preparer.prepare(request, tenant)

    async def prepare_async(self, request: pb.GenerateRequest, tenant: str = "") -> Prepared:
        """`prepare`, with the tokenization of a large prompt off the event loop.

        A small prompt is tokenized inline (a thread hop would cost more than the work); a
        large one runs on the preparation pool, whose queue is bounded (429 beyond it), so
        a multi-megabyte prompt never stalls the other streams or `/health`."""
        if _prompt_chars(request) <= self.config.inline_prepare_chars:
            return self.preparer.prepare(request, tenant)
        self.preparer.check(request)  # cheap refusals first, without queueing
        return await self.preparing.run(self.preparer.prepare, request, tenant)

    # ------------------------------------------------------------------ dispatch

    def notify(self) -> None:
        """Wake requests waiting for capacity (a worker joined, heartbeated or finished)."""
        self.chooser.notify()

    async def open(
        self, request: pb.GenerateRequest, tenant: str = "", trace: RequestTrace = NO_TRACE
    ) -> RouteStream:
        """Prepare, admit and dispatch ``request``; returns once its first chunk arrived.
        ``tenant`` is the caller's prefix-cache namespace (from its credentials); ``trace``
        the request's trace (`RouterTracing.begin` at the front), ended when the route ends."""
        trace.start()
        try:
            return await self._open(request, tenant, trace)
        except BaseException as exc:
            trace.fail(exc)
            raise

    async def _open(
        self, request: pb.GenerateRequest, tenant: str, trace: RequestTrace
    ) -> RouteStream:
        with trace.phase("mainsail.prepare"):
            prepared = await self.prepare_async(request, tenant)
        if trace.recording:
            prepared = dataclasses.replace(prepared, trace=trace)
            trace.set(self._trace_attributes(prepared))
        started = self._clock()
        prefill = self.moves.prefill_half(prepared)
        with trace.phase("mainsail.dispatch"):
            sent = await self.dispatcher.dispatch(
                prefill or prepared,
                timeout=self.config.dispatch_timeout,
                attempts=self.config.max_attempts,
                started=started,
                kv_publish=prefill is not None,
                cold_start_timeout=self.config.cold_start_timeout,
            )
        first = sent.first
        route = RouteStream(prepared, sent.entry.worker_id, first, nothing(), started, sent.entry)
        if prefill is not None and first.finish_reason == "length" and first.token_ids:
            # The prefill half is done; the decode half continues from its token.
            first.finish_reason = ""
            first.ClearField("usage")
            await close_stream(sent.stream)
            route.after_first = self.moves.decode_half(route)
        else:
            route.after_first = self.moves.after_first(route, sent.stream)
        self.moves.active[prepared.request_id] = route
        return route

    # ------------------------------------------------------------------ moves

    async def migrate(
        self, request_id: str, target: str | None = None, kv: bool | None = None
    ) -> bool:
        """See `RequestMover.migrate`."""
        return await self.moves.migrate(request_id, target, kv)

    async def drain(self, worker_id: str, drain: bool = True) -> int:
        """See `RequestMover.drain`."""
        return await self.moves.drain(worker_id, drain)

    async def scale_experts(self, worker_id: str, expert_parallel: int) -> pb.ScaleExpertsReply:
        """Asks a registered worker to move to ``expert_parallel`` expert ranks (elastic EP,
        `Worker.ScaleExperts`): 404 for an unknown worker, 400 for a degree the worker's model
        cannot take, 409 when it cannot change now (not a sharded MoE worker, or a change is
        under way), 502 when it cannot be reached."""
        entry = self.registry.get(worker_id)
        if entry is None:
            raise not_found(f"No worker {worker_id!r} is registered.")
        try:
            return await self.transport.scale_experts(entry.address, expert_parallel)
        except WorkerRefused as exc:
            if exc.invalid_argument:
                raise bad_request(str(exc), param="expertParallel") from exc
            raise RouterError(409, str(exc), code="conflict") from exc
        except TransportError as exc:
            raise RouterError(
                502, f"Worker {worker_id!r} could not be reached: {exc}", type="server_error"
            ) from exc

    def plan_rebalance(self) -> list[Move]:
        """See `RequestMover.plan_rebalance`."""
        return self.moves.plan_rebalance()

    async def rebalance(self) -> list[Move]:
        """See `RequestMover.rebalance`."""
        return await self.moves.rebalance()

    # ------------------------------------------------------------------ streaming

    async def generate(self, request: pb.GenerateRequest) -> AsyncIterator[pb.GenerateResponse]:
        """The whole request as responses; errors before the first token raise RouterError."""
        route = await self.open(request)
        async for response in self.responses(route):
            yield response

    async def responses(self, route: RouteStream) -> AsyncIterator[pb.GenerateResponse]:
        """Turn a route's chunks into client responses, recording latency and usage."""
        async for chunk in self.chunks(route):
            yield self._response(route, chunk)

    async def chunks(self, route: RouteStream) -> AsyncGenerator[pb.TokenChunk, None]:
        """The route's chunks as the worker sent them, ending with one that has a finish
        reason ("error" when the worker broke off); records latency and usage, releases the
        worker and aborts the request if the caller stops early."""
        last_seen = self._clock()
        self._latency(route).ttft.observe(last_seen - route.started)
        chunk: pb.TokenChunk | None = route.first
        finished = False
        try:
            while chunk is not None:
                if chunk.finish_reason:
                    finished = True
                    self._account(chunk)
                yield chunk
                if finished:
                    break
                chunk = await anext(route.after_first, None)
                if chunk is not None and chunk.token_ids:
                    now = self._clock()
                    gap = (now - last_seen) / len(chunk.token_ids)
                    itl = self._latency(route).itl
                    for _ in chunk.token_ids:  # a coalesced chunk: its tokens share the gap
                        itl.observe(gap)
                    last_seen = now
            if not finished:
                yield pb.TokenChunk(
                    request_id=route.prepared.request_id,
                    finish_reason="error",
                    error="worker closed the stream without finishing",
                )
        finally:
            if not finished:
                entry = self.registry.get(route.worker_id)
                if entry is not None:
                    await self.transport.abort(entry.address, route.prepared.request_id)
            await close_stream(route.after_first)
            # Released here, not in `after_first`: a route whose first chunk finished it
            # never starts `after_first`, and closing an unstarted generator runs none of it.
            if route.close():
                self.moves.active.pop(route.prepared.request_id, None)
                if route.entry is not None:
                    self.dispatcher.release(route.entry)
            self._latency(route).e2e.observe(self._clock() - route.started)
            route.prepared.trace.finish(chunk, route.worker_id, finished)

    def _trace_attributes(self, prepared: Prepared) -> dict[str, AttributeValue]:
        """What a request's root span says about it: ids, sizes and classes, never text."""
        adapter = prepared.adapter
        return {
            "gen_ai.request.model": self.config.model_name,
            "gen_ai.request.max_tokens": prepared.sampling.max_tokens,
            "mainsail.adapter": adapter if adapter in self.config.adapters else "",
            "mainsail.request_id": prepared.request_id,
            "mainsail.pool": prepared.info.role,
            "mainsail.slo_class": prepared.info.slo_class or "",
            "mainsail.priority": prepared.priority,
            "mainsail.prompt_tokens": len(prepared.token_ids),
            "mainsail.prompt_blocks": len(prepared.info.block_hashes),
        }

    def _latency(self, route: RouteStream) -> RouteLatency:
        """The route's latency histograms: labels from configured names and role names only."""
        adapter = route.prepared.adapter
        model = adapter if adapter in self.config.adapters else self.config.model_name
        role = route.entry.info.role if route.entry is not None else route.prepared.info.role
        pool = role if role in ROLES else "other"
        slo = route.prepared.info.slo_class
        return self.metrics.latency(model, pool, slo if slo in self._slo_names else "none")

    def _account(self, chunk: pb.TokenChunk) -> None:
        reason = chunk.finish_reason  # sent by the worker: only known values become labels
        outcome = "ok" if reason in ("stop", "length") else reason if reason == "abort" else "error"
        child = self._outcome_metric.get(outcome)
        if child is None:
            child = self._outcome_metric[outcome] = self.metrics.requests.labels("any", outcome)
        child.inc()
        self.metrics.prompt_tokens.inc(chunk.usage.prompt_tokens)
        self.metrics.cached_tokens.inc(chunk.usage.cached_tokens)
        self.metrics.generation_tokens.inc(chunk.usage.completion_tokens)

    def _response(self, route: RouteStream, chunk: pb.TokenChunk) -> pb.GenerateResponse:
        return pb.GenerateResponse(
            request_id=route.prepared.request_id,
            token_ids=chunk.token_ids,
            text=chunk.text,
            finish_reason=chunk.finish_reason,
            logprobs=chunk.logprobs,
            usage=chunk.usage,
            worker_id=route.worker_id,
            error=chunk.error,
        )


def _prompt_chars(request: pb.GenerateRequest) -> int:
    """How much text a request asks the router to tokenize (a bound on the work)."""
    if request.prompt:
        return len(request.prompt)
    return sum(len(m.content) + len(m.role) for m in request.messages) + len(
        request.prompt_token_ids
    )


__all__ = ["Prepared", "RouteStream", "Router", "RouterError"]
