"""Moving a streaming request to another worker: the continuation every move shares.

The new worker gets the prompt plus every token already streamed as its prompt, and the
remaining budget; the client's stream carries on. Used when a worker fails mid-stream (resume),
on request (`migrate`, `drain`), by automatic rebalancing (`rebalance`), and for the decode half
of a disaggregated request (`prefill_half` / `decode_half`). Each move is one
`Dispatcher.dispatch`, the same path a new request takes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Coroutine, Sequence
from typing import Any

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.router.errors import RouterError, WorkerRefused, not_found
from mainsail.router.fleet.registry import WorkerEntry, WorkerRegistry
from mainsail.router.fleet.transport import TransportError, WorkerTransport
from mainsail.router.metrics import RouterMetrics
from mainsail.router.routing.dispatch import Dispatcher, worker_request
from mainsail.router.routing.prepare import Prepared
from mainsail.router.routing.rebalance import Move, WorkerLoad, plan_moves
from mainsail.router.routing.route_stream import (
    KVMove,
    RouteStream,
    close_stream,
    prepend,
    whole_usage,
)
from mainsail.router.settings import RouterConfig

log = logging.getLogger(__name__)
_CANCEL_WAIT_S = 10.0  # for a given-up KV move's target to end the request
DRAIN_WAIT_S = 8.0
"""How long a drain waits for its moves with the KV (the operator's drain call allows 10 s
before it removes the pod; a move still under way then falls back to recompute)."""


class RequestMover:
    """The open routes by request id, and the moves between workers (see the module doc)."""

    def __init__(
        self,
        config: RouterConfig,
        registry: WorkerRegistry,
        transport: WorkerTransport,
        dispatcher: Dispatcher,
        metrics: RouterMetrics,
    ) -> None:
        self.config = config
        self.registry = registry
        self.transport = transport
        self.dispatcher = dispatcher
        self.metrics = metrics
        self.active: dict[str, RouteStream] = {}  # open routes by request id
        self._moving: set[asyncio.Task[None]] = set()  # KV moves under way
        self._clock = dispatcher.clock

    def prefill_half(self, prepared: Prepared) -> Prepared | None:
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

    async def decode_half(self, route: RouteStream) -> AsyncIterator[pb.TokenChunk]:
        """Continues a prefilled request on a decode worker (which fetches the published KV)."""
        stream = await self.move(route, list(route.first.token_ids), reason="handoff")
        if stream is None:
            why = "no decode worker took the request after its prefill"
            yield pb.TokenChunk(
                request_id=route.prepared.request_id, finish_reason="error", error=why
            )
            return
        self.metrics.handoffs.inc()
        async for chunk in self.after_first(route, stream, moved=True):
            yield chunk

    async def after_first(
        self, route: RouteStream, stream: AsyncIterator[pb.TokenChunk], moved: bool = False
    ) -> AsyncIterator[pb.TokenChunk]:
        """The chunks after the first. Moves the request to another worker when its worker
        fails mid-stream, or when `migrate` asked for it (see the module docstring)."""
        try:
            async for chunk in self._after_first(route, stream, moved):
                yield chunk
        finally:
            if route.kv_move is not None:  # ended while a KV move was under way
                self._background(self._drop_kv_move(route))

    def _background(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(work)
        self._moving.add(task)
        task.add_done_callback(self._moving.discard)
        return task

    async def _after_first(
        self, route: RouteStream, stream: AsyncIterator[pb.TokenChunk], moved: bool
    ) -> AsyncIterator[pb.TokenChunk]:
        generated = route.generated
        generated.extend(route.first.token_ids)
        route.observe_tokens(len(route.first.token_ids), self._clock())
        resumes = 0  # moves after failures, bounded by max_resumes
        while True:
            migrating = kv_moved = False
            try:
                async for chunk in stream:
                    generated.extend(chunk.token_ids)
                    route.observe_tokens(len(chunk.token_ids), self._clock())
                    if chunk.finish_reason == "migrated":
                        kv_moved = True  # the request runs on the KV move's target now
                        if chunk.token_ids:
                            chunk.finish_reason = ""
                            yield chunk
                        break
                    if chunk.finish_reason == "abort" and route.migrate_to is not None:
                        migrating = True  # our own abort: move on instead of finishing
                        if chunk.token_ids:
                            chunk.finish_reason = ""
                            yield chunk
                        break
                    if moved and chunk.finish_reason:
                        whole_usage(chunk, len(route.prepared.token_ids), len(generated))
                    yield chunk
                    if chunk.finish_reason:
                        return
                why = "worker closed the stream without finishing"
            except WorkerRefused as exc:
                why = f"the worker refused the request: {exc}"
            except TransportError as exc:
                why = f"worker failed mid-stream: {exc}"
                self.registry.mark_failed(route.worker_id)
                route.migrate_to = None  # a move asked for meanwhile is this resume
            kv_move, route.kv_move = route.kv_move, None
            if kv_moved and kv_move is not None:
                route.prepared.trace.kv_move_ended(True)
                if route.entry is not None:
                    self.dispatcher.release(route.entry)
                route.entry, route.worker_id = kv_move.entry, kv_move.entry.worker_id
                stream, moved = kv_move.stream, True
                self.metrics.migrations.inc()
                continue
            route.kv_move = kv_move
            await self._drop_kv_move(route)  # the source ended otherwise: the target's goes
            if kv_moved:
                why = "the worker moved the request to a worker the router does not know"
            resumed = None
            if migrating:
                target, route.migrate_to = route.migrate_to, None
                resumed = await self.move(route, generated, target or None, reason="migrate")
                if resumed is not None:
                    self.metrics.migrations.inc()
                why = "the request could not be moved to another worker"
            while resumed is None and resumes < self.config.max_resumes:
                resumes += 1
                resumed = await self.move(route, generated)
                if resumed is not None:
                    self.metrics.resumes.inc()
            if resumed is None:
                yield pb.TokenChunk(request_id=route.prepared.request_id, finish_reason="error",
                                    error=why)  # fmt: skip
                return
            stream, moved = resumed, True

    async def move(
        self,
        route: RouteStream,
        generated: Sequence[int],
        target: str | None = None,
        reason: str = "resume",
    ) -> AsyncIterator[pb.TokenChunk] | None:
        """Continues ``route`` on another worker (``target`` if given and registered); its
        stream, or None if no worker took it. ``reason`` (resume, migrate, handoff) labels
        the move's span."""
        if route.prepared.sampling.max_tokens - len(generated) <= 0:
            return None
        if route.entry is not None:  # the old worker no longer holds the request
            self.dispatcher.release(route.entry)
            route.entry = None
        trace = route.prepared.trace
        try:
            with trace.phase("mainsail.migration") as span, trace.phase("mainsail.dispatch"):
                span.set("mainsail.migration.reason", reason)
                span.set("mainsail.migration.from_worker", route.worker_id)
                span.set("mainsail.migration.generated_tokens", len(generated))
                sent = await self.dispatcher.dispatch(
                    route.prepared,
                    timeout=self.config.resume_timeout,
                    avoid=(route.worker_id,),
                    target=target,
                    generated=generated,
                )
        except RouterError:
            return None
        route.entry, route.worker_id = sent.entry, sent.entry.worker_id
        return prepend(sent.first, sent.stream)

    # ------------------------------------------------------------------ migration

    async def migrate(
        self, request_id: str, target: str | None = None, kv: bool | None = None
    ) -> bool:
        """Moves a streaming request to ``target`` (a worker id) or wherever the scheduler
        picks; False when the request is not streaming here (unknown or finished).

        With its KV (``kv``, default `RouterConfig.kv_migration`, when the workers can): the
        target is told to expect the request, and its worker (`Worker.Migrate`) copies the KV
        there in stages while the request keeps decoding; it ends the request on its side
        with finish reason "migrated" once the target took it over, and the client's stream
        carries on from the target's (`after_first`). By recompute (the fallback whenever
        that fails): the worker is asked to abort; its last chunk (reason "abort") is
        swallowed and the request continues elsewhere from the tokens already streamed, as
        after a failure.
        """
        route = self.active.get(request_id)
        if route is None or route.closed:
            return False
        entry = self.registry.get(route.worker_id)
        if entry is None:
            return False
        if route.migrate_to is not None or route.kv_move is not None:
            return True  # already on its way
        if (self.config.kv_migration if kv is None else kv) and self.transport.moves_kv:
            route.moving = self._background(self._move_kv(route, entry, target))
            return True
        await self._recompute(route, entry, target)
        return True

    async def _recompute(self, route: RouteStream, source: WorkerEntry, target: str | None) -> None:
        route.migrate_to = target or ""
        await self.transport.abort(source.address, route.prepared.request_id)

    async def _move_kv(self, route: RouteStream, source: WorkerEntry, target: str | None) -> None:
        """One move with the KV (see `migrate`); falls back to recompute when it fails."""
        rid = route.prepared.request_id
        picked = self.registry.get(target) if target else None
        if picked is None or picked.draining or picked.worker_id == source.worker_id:
            try:
                picked, _hits = await self.dispatcher.chooser.choose(
                    route.prepared, {source.worker_id}, self._clock(), self.config.resume_timeout
                )
            except RouterError:
                if not route.closed and route.kv_move is None:
                    await self._recompute(route, source, None)
                return
        if route.closed:
            return
        self.dispatcher.book(picked)
        announce = worker_request(route.prepared, route.generated)
        announce.adopt = True
        route.prepared.trace.kv_move_started(source.worker_id, picked.worker_id, announce)
        stream = self.transport.submit(picked.address, announce)
        move = KVMove(picked, stream, asyncio.ensure_future(anext(stream)))
        route.kv_move = move
        asked = self._clock()
        reply = await self.transport.migrate(
            source.address, rid, picked.address, announce.trace_context
        )
        took = self._clock() - asked
        self.metrics.kv_migration_seconds.observe(took)
        if reply.accepted:
            self.metrics.kv_migrations.inc()
            self.metrics.kv_migration_pause.observe(reply.pause_seconds)
            log.info(
                "moved %s from %s to %s with its KV in %.3f s: %d stages, %d blocks (%d paused), "
                "paused %.3f s", rid, source.worker_id, picked.worker_id, took, reply.stages,
                reply.blocks, reply.final_blocks, reply.pause_seconds,
            )  # fmt: skip
            return  # `after_first` switches to the target when the source says "migrated"
        self.metrics.kv_migration_failures.inc()
        log.warning("moving %s from %s to %s with its KV failed after %.3f s (%s); recomputing",
                    rid, source.worker_id, picked.worker_id, took, reply.detail)  # fmt: skip
        if route.kv_move is not move:
            return  # the source's stream ended meanwhile; `after_first` handled it
        await self._drop_kv_move(route)
        if not route.closed:
            await self._recompute(route, source, picked.worker_id)

    async def _drop_kv_move(self, route: RouteStream) -> None:
        """Give up the route's KV move, if any, and wait until its target side is gone (also
        when another task is already giving it up): only then may the request be sent to
        that worker again."""
        move, route.kv_move = route.kv_move, None
        if move is not None:
            route.prepared.trace.kv_move_ended(False)
            route.kv_dropping = asyncio.ensure_future(self._cancel(route, move))
        if route.kv_dropping is not None:
            await asyncio.shield(route.kv_dropping)

    async def _cancel(self, route: RouteStream, move: KVMove) -> None:
        """Drop a KV move's target side: abort the request there and read its stream to the
        end (so that the id is free there again before a recompute may reuse it), then
        release the booking."""
        await self.transport.abort(move.entry.address, route.prepared.request_id)
        stream = move.stream
        try:
            async with asyncio.timeout(_CANCEL_WAIT_S):
                async for _chunk in stream:
                    pass
        except Exception:  # timed out, refused, broken: nothing more to read
            pass
        finally:
            await close_stream(stream)
            if not move.first.done():
                move.first.cancel()
            self.dispatcher.release(move.entry)

    def plan_rebalance(self) -> list[Move]:
        """This round's automatic migrations and drains (`mainsail.router.routing.rebalance`,
        the one planner), not yet made."""
        streams: dict[str, list[tuple[str, int]]] = {}
        ratios: dict[str, dict[str, float]] = {}
        for route in self.active.values():
            if route.migrate_to is None and route.kv_move is None and not route.closed:
                rid = route.prepared.request_id
                context = len(route.prepared.token_ids) + len(route.generated)
                streams.setdefault(route.worker_id, []).append((rid, context))
                target = route.prepared.tpot_target_s
                if target > 0 and route.tpot_s > 0:
                    ratios.setdefault(route.worker_id, {})[rid] = route.tpot_s / target
        workers = [
            WorkerLoad(
                e.worker_id,
                e.load.running,
                e.load.waiting,
                e.load.max_num_seqs or e.info.max_num_seqs or 1,
                e.draining,
                streams.get(e.worker_id, []),
                ratios.get(e.worker_id, {}),
                e.load.kv_blocks_used / e.load.kv_blocks_total if e.load.kv_blocks_total else 0.0,
            )
            for e in self.registry.entries()
        ]
        return plan_moves(workers, self.config.rebalance)

    async def rebalance(self) -> list[Move]:
        """Plans and makes one round of automatic migrations; the moves started."""
        made = [m for m in self.plan_rebalance() if await self.migrate(m.request_id, m.target)]
        self.metrics.rebalance_moves.inc(len([m for m in made if m.reason != "drain"]))
        return made

    async def drain(self, worker_id: str, drain: bool = True) -> int:
        """Stops (or, with ``drain=False``, resumes) sending requests to a worker; draining
        also migrates every request streaming there from this router. The worker holds the
        state (`Worker.Drain`) and reports it to every router replica, which then stop
        sending it requests and move theirs (`evacuate`). Returns how many were moved here."""
        entry = self.registry.get(worker_id)
        if entry is None:
            raise not_found(f"No worker {worker_id!r} is registered.")
        try:
            reply = await self.transport.drain(entry.address, drain)
        except TransportError as exc:
            # Unreachable: this router stops using it anyway; the others find out when
            # its heartbeats stop (or it fails their requests).
            log.warning("worker %s did not take the drain (%s); draining here only", worker_id, exc)
            entry.draining = drain
        else:
            self.registry.set_draining(worker_id, reply.draining, reply.drain_epoch)
        self.dispatcher.chooser.notify()
        if not drain:
            return 0
        return await self.evacuate(worker_id)

    async def evacuate(self, worker_id: str) -> int:
        """Moves every request this router streams from ``worker_id`` elsewhere (a drain
        asked here, or heard from the worker's heartbeat), where the planner spreads them,
        and waits (at most `DRAIN_WAIT_S`) for the moves with the KV to finish, so that a
        worker drained before its removal is empty when the call returns; how many moved."""
        planned = {
            m.request_id: m.target
            for m in self.plan_rebalance()
            if m.source == worker_id and m.reason == "drain"
        }
        streaming = [r for r in self.active.values() if r.worker_id == worker_id]
        moved = 0
        for route in streaming:
            rid = route.prepared.request_id
            moved += await self.migrate(rid, planned.get(rid))
        pending = [r.moving for r in streaming if r.moving is not None and not r.moving.done()]
        if pending:
            await asyncio.wait(pending, timeout=DRAIN_WAIT_S)
        return moved
