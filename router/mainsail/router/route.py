"""The one request path both fronts call: validate, admit, schedule, dispatch, stream.

`Router.open` does everything that can fail *before* the first token — validation (400/404),
admission (429), choosing a worker (503 after `dispatch_timeout`), and fail-over to another
worker when the chosen one breaks before producing anything — so the HTTP front can still
answer with a proper status code. The returned `RouteStream` yields the rest.

A worker that dies *after* the first token costs the request nothing: the request moves to
another worker, which continues it from the tokens already streamed (`moves.py`, also behind
`migrate`, `drain`, rebalancing and the decode half of disaggregated requests). Only when no
worker takes it within `resume_timeout`, or after `max_resumes` moves, does the stream end
with `finish_reason="error"` — never a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.router.errors import (
    RouterError,
    overloaded,
    unavailable,
    upstream_failed,
)
from mainsail.router.kvindex import ApproximateIndex, KVIndex
from mainsail.router.metrics import RouterMetrics
from mainsail.router.moves import MovesMixin
from mainsail.router.prepare import Prepared, RequestPreparer
from mainsail.router.registry import WorkerEntry, WorkerRegistry
from mainsail.router.route_stream import RouteStream, close_stream, nothing
from mainsail.router.scheduling import (
    SchedulingContext,
    SchedulingProfile,
)
from mainsail.router.settings import RouterConfig
from mainsail.router.transport import TransportError, WorkerTransport
from mainsail.router.worker_view import ScheduleRecorder, WorkerViews
from mainsail.spec.tokenizer import Tokenizer


class Router(MovesMixin):
    """Validation, admission, scheduling and dispatch over an injected transport."""

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
    ) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.registry = registry
        self.transport = transport
        self.profile = profile
        self.index = index
        self.approx = approx
        self.publishes_events = publishes_events
        self.metrics = metrics or RouterMetrics()
        self._clock = clock
        self._pending = 0
        self._changed = asyncio.Event()
        self.preparer = RequestPreparer(config, tokenizer)
        self._views = WorkerViews(registry)
        self._recorder = ScheduleRecorder(self.metrics)
        self._outcome_metric: dict[str, Any] = {}
        self._active: dict[str, RouteStream] = {}  # open routes by request id (for migration)

    # ------------------------------------------------------------------ validation

    def served_models(self) -> list[str]:
        """Model ids clients may name: the base model and `<model>:<adapter>`."""
        return self.preparer.served_models()

    def prepare(self, request: pb.GenerateRequest) -> Prepared:
        """Check and tokenize ``request``; raises RouterError (4xx) naming what is wrong."""
        return self.preparer.prepare(request)

    # ------------------------------------------------------------------ dispatch

    def notify(self) -> None:
        """Wake requests waiting for capacity (a worker joined, heartbeated or finished)."""
        self._changed.set()

    async def open(self, request: pb.GenerateRequest) -> RouteStream:
        """Prepare, admit and dispatch ``request``; returns once its first chunk arrived."""
        prepared = self.prepare(request)
        if self._pending >= self.config.max_queue:
            raise overloaded(
                f"The router's queue is full ({self.config.max_queue} requests waiting); "
                "retry later."
            )
        started = self._clock()
        tried: set[str] = set()
        last_error = ""
        prefill = self._prefill_half(prepared)
        target = prefill or prepared
        for _attempt in range(self.config.max_attempts):
            entry, hit_blocks = await self._choose(target, tried, started)
            tried.add(entry.worker_id)
            entry.outstanding += 1
            # Prefill work this request adds until its first token: the router's own, current
            # view of the backlog (worker reports lag by up to a heartbeat).
            backlog = max(0, len(prepared.token_ids) - hit_blocks * self.config.kv_hash.block_size)
            entry.pending_prefill += backlog
            self.metrics.inflight.inc()
            work = self._worker_request(target, kv_publish=prefill is not None)
            stream = self.transport.submit(entry.address, work)
            self._recorder.flush()  # after the request is on its way, off its latency
            try:
                first = await anext(stream)
            except (TransportError, StopAsyncIteration) as exc:
                last_error = str(exc) or "stream ended before any token"
                self._release(entry)
                self.registry.mark_failed(entry.worker_id)
                self.metrics.failovers.inc()
                continue
            except BaseException:
                self._release(entry)
                await close_stream(stream)
                raise
            finally:
                entry.pending_prefill = max(0, entry.pending_prefill - backlog)
            route = RouteStream(prepared, entry.worker_id, first, nothing(), started, entry)
            if prefill is not None and first.finish_reason == "length" and first.token_ids:
                # The prefill half is done; the decode half continues from its token.
                first.finish_reason = ""
                first.ClearField("usage")
                await close_stream(stream)
                route.rest = self._decode_half(route)
            else:
                route.rest = self._rest(route, stream)
            self._active[prepared.request_id] = route
            return route
        raise upstream_failed(f"Workers failed before producing a token: {last_error}")

    async def _choose(
        self, prepared: Prepared, tried: set[str], started: float, timeout: float | None = None
    ) -> tuple[WorkerEntry, int]:
        timeout = self.config.dispatch_timeout if timeout is None else timeout
        deadline = started + timeout
        self._pending += 1
        self.metrics.queued.inc()
        try:
            while True:
                chosen = self._schedule(prepared, tried)
                if chosen is not None:
                    return chosen
                self._recorder.flush()
                remaining = deadline - self._clock()
                if remaining <= 0:
                    raise unavailable(
                        f"No worker could take the request within {timeout:g} s "
                        f"({len(self.registry)} registered)."
                    )
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), timeout=min(remaining, 0.5))
        except BaseException:
            self._recorder.flush()
            raise
        finally:
            self._pending -= 1
            self.metrics.queued.dec()

    def _schedule(self, prepared: Prepared, tried: set[str]) -> tuple[WorkerEntry, int] | None:
        """The chosen worker and how many leading blocks the index says it holds."""
        entries = [
            e for e in self.registry.entries() if e.worker_id not in tried and not e.draining
        ]
        if not entries:
            return None
        t0 = time.perf_counter()
        hashes = prepared.info.block_hashes
        hits = self.index.longest_prefix(hashes)
        if self.approx is not None:
            # Workers that publish no KV events are scored from the router's own history.
            for worker_id, depth in self.approx.longest_prefix(hashes).items():
                if not self.publishes_events(worker_id):
                    hits[worker_id] = max(hits.get(worker_id, 0), depth)
        ctx = SchedulingContext(
            request=prepared.info,
            workers=tuple([self._views.snapshot(e) for e in entries]),
            prefix_hits=hits,
            now=self._clock(),
        )
        decision = self.profile.schedule(ctx)
        elapsed = time.perf_counter() - t0
        if decision.worker_id is None:
            self._recorder.add(elapsed, decision.timings, "", 0)
            return None
        mode = self.index.mode
        if self.approx is not None and not self.publishes_events(decision.worker_id):
            self.approx.record_dispatch(decision.worker_id, hashes)
            mode = self.approx.mode
        depth = hits.get(decision.worker_id, 0)
        self._recorder.add(elapsed, decision.timings, mode, depth)
        entry = self.registry.get(decision.worker_id)
        return None if entry is None else (entry, depth)

    def _worker_request(self, prepared: Prepared, kv_publish: bool = False) -> pb.WorkerRequest:
        return pb.WorkerRequest(
            request_id=prepared.request_id,
            prompt_token_ids=prepared.token_ids,
            sampling=prepared.sampling,
            adapter=prepared.adapter,
            priority=prepared.priority,
            kv_publish=kv_publish,
        )

    def _release(self, entry: WorkerEntry) -> None:
        entry.outstanding = max(0, entry.outstanding - 1)
        self.metrics.inflight.dec()
        self.notify()

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
        first_seen = self._clock()
        self.metrics.ttft.observe(first_seen - route.started)
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
                chunk = await anext(route.rest, None)
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
            await close_stream(route.rest)
            # Released here, not in `_rest`: a route whose first chunk finished it never
            # starts `rest`, and closing an unstarted generator runs none of its code.
            if not route._closed:
                route._closed = True
                self._active.pop(route.prepared.request_id, None)
                if route.entry is not None:
                    self._release(route.entry)
            self.metrics.e2e.observe(self._clock() - route.started)

    def _account(self, chunk: pb.TokenChunk) -> None:
        outcome = "ok" if chunk.finish_reason in ("stop", "length") else chunk.finish_reason
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


__all__ = ["Prepared", "RouteStream", "Router", "RouterError"]
