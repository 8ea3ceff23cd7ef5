"""One dispatch: choose a worker, book it, submit, wait for the first chunk, fail over.

Every way a request reaches a worker goes through `Dispatcher.dispatch`: a new request
(`Router.open`), the decode half of a disaggregated request, and every move of a streaming
request to another worker (`moves.py`: after a failure, `migrate`, `drain`, rebalancing). So
the router's own counts — `outstanding` and the prefill backlog per worker, the in-flight
gauge — and taking a broken worker out of the registry are written here once. A worker
that refuses one request (`WorkerRefused`: its stream is fine) is not broken: the refusal is
that request's error (400 naming the field when the request was invalid), and the worker
keeps serving everyone else.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.router.errors import WorkerRefused, upstream_failed
from mainsail.router.fleet.registry import WorkerEntry, WorkerRegistry
from mainsail.router.fleet.transport import TransportError, WorkerTransport
from mainsail.router.metrics import RouterMetrics
from mainsail.router.routing.choose import WorkerChooser
from mainsail.router.routing.prepare import Prepared
from mainsail.router.routing.route_stream import close_stream


@dataclass
class Dispatched:
    """A request a worker accepted: the booked worker, its first chunk and the rest."""

    entry: WorkerEntry
    first: pb.TokenChunk
    stream: AsyncIterator[pb.TokenChunk]


def worker_request(
    prepared: Prepared,
    generated: Sequence[int] = (),
    kv_publish: bool = False,
    ttft_deadline: float = 0.0,
) -> pb.WorkerRequest:
    """What a worker is sent: the prompt plus any tokens already streamed (as prompt, with
    the remaining budget and the sampling position to continue from), and its SLO: the
    absolute deadline of its next token (unix seconds) and its TPOT target."""
    sampling = prepared.sampling
    if generated:
        sampling = pb.SamplingParams()
        sampling.CopyFrom(prepared.sampling)
        sampling.max_tokens = prepared.sampling.max_tokens - len(generated)
    return pb.WorkerRequest(
        request_id=prepared.request_id,
        prompt_token_ids=[*prepared.token_ids, *generated],
        sampling=sampling,
        adapter=prepared.adapter,
        priority=prepared.priority,
        kv_publish=kv_publish,
        sampled_before=len(generated),
        cache_namespace=prepared.cache_namespace,
        ttft_deadline=ttft_deadline,
        tpot_target=prepared.tpot_target_s,
    )


class Dispatcher:
    """Books, submits and fails over; the only writer of the router's per-worker counts."""

    def __init__(
        self,
        registry: WorkerRegistry,
        transport: WorkerTransport,
        chooser: WorkerChooser,
        metrics: RouterMetrics,
        block_size: int,
        clock: Callable[[], float],
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry
        self.transport = transport
        self.chooser = chooser
        self.metrics = metrics
        self.block_size = block_size
        self._clock = clock
        self._wall = wall_clock

    async def dispatch(
        self,
        prepared: Prepared,
        *,
        timeout: float,
        attempts: int = 1,
        started: float | None = None,
        avoid: Sequence[str] = (),
        target: str | None = None,
        generated: Sequence[int] = (),
        kv_publish: bool = False,
        cold_start_timeout: float = 0.0,
    ) -> Dispatched:
        """Sends ``prepared`` (continuing after ``generated``) to ``target`` if it can take
        it, else to the scheduler's choice among workers not in ``avoid``, trying up to
        ``attempts`` workers until one produces a first chunk. RouterError 503 when no
        worker was free within ``timeout`` of ``started`` (``cold_start_timeout`` while no
        worker is registered at all, see `WorkerChooser.choose`), 502 when every try failed."""
        started = self._clock() if started is None else started
        tried = set(avoid)
        work = worker_request(
            prepared, generated, kv_publish, self._deadline(prepared, started, generated)
        )
        last_error = ""
        for _attempt in range(attempts):
            picked = self.registry.get(target) if target else None
            target = None
            if picked is not None and picked.worker_id not in tried and not picked.draining:
                entry, hit_blocks = picked, 0
            else:
                # Only a new request's first try is admitted and queued (see `choose`).
                entry, hit_blocks = await self.chooser.choose(
                    prepared,
                    tried,
                    started,
                    timeout,
                    cold_start_timeout,
                    queue=not (generated or tried),
                )
            tried.add(entry.worker_id)
            self.book(entry)
            prepared.trace.attempt(entry.worker_id, entry.info.role, hit_blocks, work)
            # Prefill work this request adds until its first token: the router's own, current
            # view of the backlog (worker reports lag by up to a heartbeat).
            backlog = max(0, len(work.prompt_token_ids) - hit_blocks * self.block_size)
            entry.pending_prefill += backlog
            stream = self.transport.submit(entry.address, work)
            self.chooser.recorder.flush()  # after the request is on its way, off its latency
            try:
                first = await anext(stream)
            except WorkerRefused as exc:
                # This request's error: the worker is fine and keeps its other streams.
                self.release(entry)
                self.metrics.worker_refused.inc()
                raise exc.to_router_error() from None
            except (TransportError, StopAsyncIteration) as exc:
                last_error = str(exc) or "stream ended before any token"
                prepared.trace.failed_attempt(entry.worker_id, last_error)
                self.release(entry)
                self.registry.mark_failed(entry.worker_id)
                if not generated:
                    self.metrics.failovers.inc()  # nothing streamed yet: a fail-over
                continue
            except BaseException:
                self.release(entry)
                await close_stream(stream)
                raise
            finally:
                entry.pending_prefill = max(0, entry.pending_prefill - backlog)
            return Dispatched(entry, first, stream)
        raise upstream_failed(f"Workers failed before producing a token: {last_error}")

    def _deadline(self, prepared: Prepared, started: float, generated: Sequence[int]) -> float:
        """When the request's next token is due, unix seconds (workers compare wall clocks):
        its TTFT target from when it arrived, or, for a request that already streamed (a
        move), one TPOT from now."""
        if generated:
            return self._wall() + (prepared.tpot_target_s or prepared.ttft_target_s)
        return self._wall() + prepared.ttft_target_s - (self._clock() - started)

    @property
    def clock(self) -> Callable[[], float]:
        """The router's clock (tests inject a manual one)."""
        return self._clock

    def book(self, entry: WorkerEntry) -> None:
        """Counts a request as outstanding on ``entry``."""
        entry.outstanding += 1
        self.metrics.inflight.inc()

    def release(self, entry: WorkerEntry) -> None:
        """Undoes `book` and wakes requests waiting for capacity."""
        entry.outstanding = max(0, entry.outstanding - 1)
        self.metrics.inflight.dec()
        self.chooser.notify()
