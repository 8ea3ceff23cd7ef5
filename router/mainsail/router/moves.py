"""Moving a streaming request to another worker: the continuation every move shares.

The new worker gets the prompt plus every token already streamed as its prompt, and the
remaining budget; the client's stream carries on. Used when a worker fails mid-stream (resume),
on request (`migrate`, `drain`), by automatic rebalancing (`rebalance`), and for the decode half
of a disaggregated request (`_prefill_half` / `_decode_half`). A mixin of `Router`: it needs the
router's registry, transport, scheduling (`_choose`) and accounting (`_release`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.router.errors import RouterError, not_found
from mainsail.router.metrics import RouterMetrics
from mainsail.router.prepare import Prepared
from mainsail.router.rebalance import Move, WorkerLoad, plan_moves
from mainsail.router.registry import WorkerEntry, WorkerRegistry
from mainsail.router.route_stream import RouteStream, prepend, whole_usage
from mainsail.router.settings import RouterConfig
from mainsail.router.transport import TransportError, WorkerTransport


class MovesMixin:
    """The moves between workers (see the module docstring)."""

    config: RouterConfig
    registry: WorkerRegistry
    transport: WorkerTransport
    metrics: RouterMetrics
    _active: dict[str, RouteStream]
    _clock: Callable[[], float]

    if TYPE_CHECKING:

        async def _choose(
            self, prepared: Prepared, tried: set[str], started: float, timeout: float | None = None
        ) -> tuple[WorkerEntry, int]: ...

        def _release(self, entry: WorkerEntry) -> None: ...

        def notify(self) -> None: ...

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
                        whole_usage(chunk, len(route.prepared.token_ids), len(generated))
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
            sampled_before=len(generated),
        )
        stream = self.transport.submit(entry.address, request)
        try:
            first = await anext(stream)
        except (TransportError, StopAsyncIteration):
            self.registry.mark_failed(entry.worker_id)
            return None
        return prepend(first, stream)

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
