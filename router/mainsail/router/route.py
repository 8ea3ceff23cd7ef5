"""The one request path both fronts call: validate, admit, schedule, dispatch, stream.

`Router.open` does everything that can fail *before* the first token — validation (400/404),
admission (429), choosing a worker (503 after `dispatch_timeout`), and fail-over to another
worker when the chosen one breaks before producing anything — so the HTTP front can still
answer with a proper status code. The returned `RouteStream` yields the rest.

A worker that dies *after* the first token costs the request nothing: the router moves it to
another worker and continues it there (live migration by recompute). The new worker gets the
prompt plus every token already streamed as its prompt — its prefix cache or the Redis KV tier
usually holds most of that — and the remaining token budget; the client's stream carries on
with the next token, and the final usage counts the original prompt and all completion tokens.
Greedy requests continue exactly as they would have (the engine's recompute is
token-identical); seeded sampling continues from a fresh generator state. Only when no worker
takes it within `resume_timeout`, or after `max_resumes` moves, does the stream end with
`finish_reason="error"` — never a hang.

The same move on request (`Router.migrate`, `Router.drain`): the router aborts the request on
its worker, swallows that worker's final "abort" chunk and continues the request elsewhere —
how a worker is emptied for maintenance or scale-down without cutting a stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.router.errors import (
    RouterError,
    not_found,
    overloaded,
    unavailable,
    upstream_failed,
)
from mainsail.router.kvindex import ApproximateIndex, KVIndex
from mainsail.router.metrics import RouterMetrics
from mainsail.router.prepare import Prepared, RequestPreparer
from mainsail.router.rebalance import Move, WorkerLoad, plan_moves
from mainsail.router.registry import WorkerEntry, WorkerRegistry
from mainsail.router.scheduling import (
    SchedulingContext,
    SchedulingProfile,
)
from mainsail.router.settings import RouterConfig
from mainsail.router.transport import TransportError, WorkerTransport
from mainsail.router.worker_view import ScheduleRecorder, WorkerViews
from mainsail.spec.tokenizer import Tokenizer


@dataclass
class RouteStream:
    """An open request: the first chunk is already in hand."""

    prepared: Prepared
    worker_id: str
    first: pb.TokenChunk
    rest: AsyncIterator[pb.TokenChunk]
    started: float
    entry: WorkerEntry | None = None  # released (outstanding count) when the route ends
    migrate_to: str | None = None  # set by `Router.migrate`: "" = any worker, else its id
    generated: list[int] = field(default_factory=list)  # tokens streamed so far
    _closed: bool = field(default=False)


class Router:
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
                await _close(stream)
                raise
            finally:
                entry.pending_prefill = max(0, entry.pending_prefill - backlog)
            route = RouteStream(prepared, entry.worker_id, first, _nothing(), started, entry)
            if prefill is not None and first.finish_reason == "length" and first.token_ids:
                # The prefill half is done; the decode half continues from its token.
                first.finish_reason = ""
                first.ClearField("usage")
                await _close(stream)
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

    def _prefill_half(self, prepared: Prepared) -> Prepared | None:
        """The prefill half of a disaggregated request (one token, on a prefill worker), or
        None when the request runs whole (not disaggregated, one token, no prefill worker)."""
        if not self.config.disaggregated or prepared.sampling.max_tokens <= 1:
            return None
        if not any(e.info.role == "prefill" and not e.draining for e in self.registry.entries()):
            return None
        sampling = pb.SamplingParams()
        sampling.CopyFrom(prepared.sampling)
        sampling.max_tokens = 1
        return dataclasses.replace(
            prepared,
            sampling=sampling,
            info=dataclasses.replace(prepared.info, role="prefill", max_tokens=1),
        )

    async def _decode_half(self, route: RouteStream) -> AsyncIterator[pb.TokenChunk]:
        """Continues a prefilled request on a decode worker (which fetches the published KV)."""
        stream = await self._resume(route, list(route.first.token_ids))
        if stream is None:
            why = "no decode worker took the request after its prefill"
            yield pb.TokenChunk(
                request_id=route.prepared.request_id, finish_reason="error", error=why
            )
            return
        self.metrics.handoffs.inc()
        async for chunk in self._rest(route, stream, moved=True):
            yield chunk

    async def _rest(
        self, route: RouteStream, stream: AsyncIterator[pb.TokenChunk], moved: bool = False
    ) -> AsyncIterator[pb.TokenChunk]:
        """The chunks after the first. Moves the request to another worker when its worker
        fails mid-stream, or when `migrate` asked for it (see the module docstring)."""
        generated = route.generated
        generated.extend(route.first.token_ids)
        resumes = 0  # moves after failures, bounded by max_resumes
        while True:
            migrating = False
            try:
                async for chunk in stream:
                    generated.extend(chunk.token_ids)
                    if chunk.finish_reason == "abort" and route.migrate_to is not None:
                        migrating = True  # our own abort: move on instead of finishing
                        if chunk.token_ids:
                            chunk.finish_reason = ""
                            yield chunk
                        break
                    if moved and chunk.finish_reason:
                        _whole_usage(chunk, len(route.prepared.token_ids), len(generated))
                    yield chunk
                    if chunk.finish_reason:
                        return
                why = "worker closed the stream without finishing"
            except TransportError as exc:
                why = f"worker failed mid-stream: {exc}"
                self.registry.mark_failed(route.worker_id)
            resumed = None
            if migrating:
                target, route.migrate_to = route.migrate_to, None
                resumed = await self._resume(route, generated, target or None)
                if resumed is not None:
                    self.metrics.migrations.inc()
                why = "the request could not be moved to another worker"
            while resumed is None and resumes < self.config.max_resumes:
                resumes += 1
                resumed = await self._resume(route, generated)
                if resumed is not None:
                    self.metrics.resumes.inc()
            if resumed is None:
                yield pb.TokenChunk(request_id=route.prepared.request_id, finish_reason="error",
                                    error=why)  # fmt: skip
                return
            stream, moved = resumed, True

    async def _resume(
        self, route: RouteStream, generated: list[int], target: str | None = None
    ) -> AsyncIterator[pb.TokenChunk] | None:
        """Continues ``route`` on another worker (``target`` if given and registered); its
        stream, or None if no worker took it."""
        prepared = route.prepared
        budget = prepared.sampling.max_tokens - len(generated)
        if budget <= 0:
            return None
        picked = self.registry.get(target) if target else None
        if picked is not None and picked.worker_id != route.worker_id and not picked.draining:
            entry = picked
        else:
            try:
                entry, _hits = await self._choose(
                    prepared, {route.worker_id}, self._clock(), self.config.resume_timeout
                )
            except RouterError:
                return None
        if route.entry is not None:
            self._release(route.entry)
        route.entry, route.worker_id = entry, entry.worker_id
        entry.outstanding += 1
        self.metrics.inflight.inc()
        sampling = pb.SamplingParams()
        sampling.CopyFrom(prepared.sampling)
        sampling.max_tokens = budget
        request = pb.WorkerRequest(
            request_id=prepared.request_id,
            prompt_token_ids=[*prepared.token_ids, *generated],
            sampling=sampling,
            adapter=prepared.adapter,
            priority=prepared.priority,
        )
        stream = self.transport.submit(entry.address, request)
        try:
            first = await anext(stream)
        except (TransportError, StopAsyncIteration):
            self.registry.mark_failed(entry.worker_id)
            return None
        return _prepend(first, stream)

    # ------------------------------------------------------------------ migration

    async def migrate(self, request_id: str, target: str | None = None) -> bool:
        """Moves a streaming request to ``target`` (a worker id) or wherever the scheduler
        picks; False when the request is not streaming here (unknown or finished).

        The worker is asked to abort; its last chunk (reason "abort") is swallowed and the
        request continues elsewhere from the tokens already streamed, as after a failure.
        """
        route = self._active.get(request_id)
        if route is None or route._closed:
            return False
        route.migrate_to = target or ""
        entry = self.registry.get(route.worker_id)
        if entry is None:
            return False
        await self.transport.abort(entry.address, request_id)
        return True

    def plan_rebalance(self) -> list[Move]:
        """This round's automatic migrations (`mainsail.router.rebalance`), not yet made."""
        streams: dict[str, list[tuple[str, int]]] = {}
        for route in self._active.values():
            if route.migrate_to is None and not route._closed:
                context = len(route.prepared.token_ids) + len(route.generated)
                streams.setdefault(route.worker_id, []).append((route.prepared.request_id, context))
        workers = [
            WorkerLoad(
                e.worker_id,
                e.load.running,
                e.load.waiting,
                e.load.max_num_seqs or e.info.max_num_seqs or 1,
                e.draining,
                streams.get(e.worker_id, []),
            )
            for e in self.registry.entries()
        ]
        return plan_moves(workers, self.config.rebalance)

    async def rebalance(self) -> list[Move]:
        """Plans and makes one round of automatic migrations; the moves started."""
        made = [m for m in self.plan_rebalance() if await self.migrate(m.request_id, m.target)]
        self.metrics.rebalance_moves.inc(len(made))
        return made

    async def drain(self, worker_id: str, drain: bool = True) -> int:
        """Stops (or, with ``drain=False``, resumes) sending requests to a worker; draining
        also migrates every request streaming there. Returns how many were moved."""
        entry = self.registry.get(worker_id)
        if entry is None:
            raise not_found(f"No worker {worker_id!r} is registered.")
        entry.draining = drain
        self.notify()
        if not drain:
            return 0
        streaming = [r for r in self._active.values() if r.worker_id == worker_id]
        moved = 0
        for route in streaming:
            moved += await self.migrate(route.prepared.request_id)
        return moved

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
            await _close(route.rest)
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


async def _nothing() -> AsyncIterator[pb.TokenChunk]:
    return
    yield  # an async generator that yields nothing (a placeholder until `_rest` is set)


async def _prepend(
    first: pb.TokenChunk, rest: AsyncIterator[pb.TokenChunk]
) -> AsyncIterator[pb.TokenChunk]:
    yield first
    async for chunk in rest:
        yield chunk


def _whole_usage(chunk: pb.TokenChunk, prompt_tokens: int, completion_tokens: int) -> None:
    """A resumed worker counted the streamed tokens as prompt; report the request's own."""
    chunk.usage.prompt_tokens = prompt_tokens
    chunk.usage.completion_tokens = completion_tokens
    chunk.usage.cached_tokens = min(chunk.usage.cached_tokens, prompt_tokens)


async def _close(stream: AsyncIterator[pb.TokenChunk]) -> None:
    closer = getattr(stream, "aclose", None)
    if closer is not None:
        with contextlib.suppress(Exception):
            await closer()


__all__ = ["Prepared", "RouteStream", "Router", "RouterError"]
