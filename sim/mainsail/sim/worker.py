"""A simulated worker: a continuous-batching engine on the virtual clock.

Why it is shaped like a real engine: routing quality shows up only through queueing, batching
and prefix reuse, so the worker runs the same step loop as vLLM-style engines (and ours): each
step takes every decoding sequence (one token each), continues chunked prefills, then admits
waiting requests first-come-first-served while the token budget (``max_batched_tokens``), the
sequence limit (``max_num_seqs``) and the KV cache allow. Step time comes from `GPUProfile`.

Speed: decode-only stretches are fast-forwarded. While no prefill is pending the batch is
fixed until its shortest sequence finishes, and step ``j`` lasts ``A + B*j`` (the context grows
by one token per sequence per step), so ``k`` steps take ``k*A + B*k*(k-1)/2`` and are simulated
as one event. An arrival interrupts a stretch at the end of the step in flight, exactly when a
real engine would first see it. Every request-level time (TTFT, TPOT, finish) stays exact.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from mainsail.router.scheduling.types import WorkerSnapshot
from mainsail.sim.cost import GPUProfile, attn_pairs
from mainsail.sim.kvcache import KVEventSink, SimKVCache
from mainsail.sim.kvtier import SimSharedTier
from mainsail.sim.request import SimRequest
from mainsail.spec.kv_cost import FetchCostModel, decide_fetch

StepScheduler = Callable[[float, int, int], None]
"""``schedule(time, worker_index, version)``: ask the event loop to end a step at ``time``."""

LoadScheduler = Callable[[float, int, SimRequest], None]
"""``schedule_load(time, worker_index, request)``: a tier fetch for ``request`` ends then."""


class SimWorker:
    """One engine replica: waiting queue, running batch, KV cache and step timing."""

    def __init__(
        self,
        index: int,
        profile: GPUProfile,
        block_size: int,
        schedule: StepScheduler,
        on_finish: Callable[[SimRequest], None],
        sink: KVEventSink | None = None,
        max_model_len: int = 131_072,
        hash_fingerprint: str = "",
        changed: set[int] | None = None,
        tier: SimSharedTier | None = None,
        cost: FetchCostModel | None = None,
        schedule_load: LoadScheduler | None = None,
    ) -> None:
        self.index = index
        self.worker_id = f"sim-{index:04d}"
        self.profile = profile
        self.block_size = block_size
        self.kv = SimKVCache(self.worker_id, profile.kv_capacity_blocks(block_size), sink)
        self.waiting: deque[SimRequest] = deque()
        self.running: list[SimRequest] = []
        self.busy_s = 0.0  # virtual seconds spent in steps
        self.served = 0
        self._schedule = schedule
        self._on_finish = on_finish
        self._max_model_len = max_model_len
        self._fingerprint = hash_fingerprint
        self._version = 0
        self._busy = False
        self._start = 0.0
        self._steps = 0
        self._ff_a = 0.0  # fast-forward: duration of the stretch's first step
        self._ff_b = 0.0  # fast-forward: growth of the step duration per step
        self._decodes: list[SimRequest] = []
        self._chunks: list[tuple[SimRequest, int]] = []
        self._snapshot: WorkerSnapshot | None = None
        self._changed = changed if changed is not None else set()
        self.tier = tier
        self.cost = cost or FetchCostModel(0, block_size)
        self.step_cost = profile.step_cost()  # what the router's `ttft` scorer replays
        self._schedule_load = schedule_load
        self.loading = 0  # requests parked while their blocks are fetched from the tier
        self._loading_tokens = 0
        self._fetches: dict[int, tuple[int, int]] = {}  # request index -> hashes fetched
        if tier is not None and schedule_load is None:
            raise ValueError("a worker with a shared tier needs schedule_load")

    @property
    def load(self) -> int:
        """Requests at this worker (waiting plus running)."""
        return len(self.waiting) + len(self.running)

    @property
    def backlog_tokens(self) -> int:
        """Prompt tokens still to prefill here (waiting prompts counted whole)."""
        running = sum(r.input_tokens - r.prefill_done for r in self.running)
        return running + sum(r.input_tokens for r in self.waiting) + self._loading_tokens

    def _invalidate(self) -> None:
        """Drops the cached snapshot and tells the router view this worker changed."""
        self._snapshot = None
        self._changed.add(self.index)

    def snapshot(self) -> WorkerSnapshot:
        """The router's view of this worker (cached until the worker's state changes)."""
        snap = self._snapshot
        if snap is None:
            snap = WorkerSnapshot(
                worker_id=self.worker_id,
                role="unified",
                healthy=True,
                running=len(self.running),
                waiting=len(self.waiting) + self.loading,
                max_num_seqs=self.profile.max_num_seqs,
                kv_blocks_used=self._blocks_holding_tokens(),
                kv_blocks_total=self.kv.capacity,
                adapters=frozenset(),
                max_model_len=self._max_model_len,
                outstanding=self.load,
                hash_fingerprint=self._fingerprint,
                pending_prefill_tokens=self.backlog_tokens,
                kv_cost=self.cost,
                kv_tier_id=self.tier.tier_id if self.tier is not None else "",
                kv_fetch_policy="auto" if self.tier is not None else "",
                step_cost=self.step_cost,
            )
            self._snapshot = snap
        return snap

    def _blocks_holding_tokens(self) -> int:
        """KV blocks in use as the real engine counts them: shared blocks once, and each
        running request's own blocks up to its computed context. Why not `kv.used_blocks`: the
        simulator reserves a request's whole output at admission (its KV accounting), while
        the engine grows a sequence's blocks token by token; the router reads this figure as
        decode context (`ttft` scorer, admission) and as memory pressure (`kv-utilization`),
        so reserved blocks would make a worker with long outputs ahead look busier than the
        real one would report."""
        bs = self.block_size
        chunk = {id(r): n for r, n in self._chunks}  # in the step now: booked, as the engine does
        reserved = holding = 0
        for r in self.running:
            reserved += r.private_blocks
            holding += max(0, -(-(r.context + chunk.get(id(r), 0)) // bs) - r.committed)
        return self.kv.used_blocks - reserved + holding

    def enqueue(self, req: SimRequest, now: float) -> None:
        """A request arrives from the router at ``now``."""
        req.worker = self.index
        req.dispatched = now
        if self.tier is not None and self._start_load(req, now):
            return
        self._join(req, now)

    def _start_load(self, req: SimRequest, now: float) -> bool:
        """Parks ``req`` while the tier's blocks beyond its local hits are fetched, when the
        cost model says fetching beats recomputing them (as `TierLink.start_load` does)."""
        assert self.tier is not None and self._schedule_load is not None
        hashes = req.block_hashes
        local = self.kv.prefix_hits(hashes)
        limit = min(len(hashes), (req.input_tokens - 1) // self.block_size)
        if limit <= local:
            return False
        extra = self.tier.prefix(hashes[local:limit])
        if not decide_fetch("auto", self.cost, extra):
            return False
        self.tier.fetch(hashes[local : local + extra])
        self._fetches[req.index] = (local, local + extra)
        req.tier_tokens = extra * self.block_size
        self.loading += 1
        self._loading_tokens += req.input_tokens
        self._invalidate()
        self._schedule_load(now + self.cost.fetch_seconds(extra), self.index, req)
        return True

    def load_done(self, req: SimRequest, now: float) -> None:
        """The fetch started for ``req`` finished: its blocks enter the cache, it queues."""
        self.loading -= 1
        self._loading_tokens -= req.input_tokens
        start, end = self._fetches.pop(req.index)
        self.kv.insert_cached(req.block_hashes[:end], start)
        self._join(req, now)

    def _join(self, req: SimRequest, now: float) -> None:
        """``req`` enters the waiting queue at ``now``."""
        head_blocked = bool(self.waiting)
        self.waiting.append(req)
        self._invalidate()
        if not self._busy:
            self._plan(now)
        elif self._steps > 1 and not head_blocked:
            self._interrupt(now)

    def step_end(self, now: float, version: int) -> None:
        """The step (or fast-forwarded stretch) planned with ``version`` ends at ``now``."""
        if version != self._version:
            return
        self.busy_s += now - self._start
        k = self._steps
        done: list[SimRequest] = []
        for r in self._decodes:
            r.decode_left -= k
            r.context += k
            if r.decode_left <= 0:
                done.append(r)
        bs = self.block_size
        for r, n in self._chunks:
            r.prefill_done += n
            r.context += n
            full = min(r.prefill_done // bs, len(r.block_hashes))
            if full > r.committed:
                self.kv.commit(r.block_hashes[r.committed : full])
                if self.tier is not None:
                    self._write_through(r.block_hashes[r.committed : full])
                r.private_blocks -= full - r.committed
                r.committed = full
            if r.prefill_done >= r.input_tokens:
                r.first_token = now
                r.decode_left -= 1
                if r.decode_left <= 0:
                    done.append(r)
        if done:
            for r in done:
                r.finished = now
                self.kv.release(r.block_hashes[: r.committed], r.private_blocks)
                self.served += 1
            gone = {id(r) for r in done}
            self.running = [r for r in self.running if id(r) not in gone]
            for r in done:
                self._on_finish(r)
        self._invalidate()
        self._plan(now)

    def _write_through(self, hashes: list[int]) -> None:
        """Committed blocks go to the shared tier; the router hears of them as tier "redis"."""
        assert self.tier is not None
        self.tier.store(hashes)
        sink = self.kv.sink
        if sink is not None:
            sink(self.worker_id, "stored", hashes, "redis")

    def _admit(self, now: float, budget: int) -> list[tuple[SimRequest, int]]:
        """Admits waiting requests FCFS while budget, sequence slots and KV allow."""
        chunks: list[tuple[SimRequest, int]] = []
        bs = self.block_size
        limit = self.profile.max_num_seqs
        while self.waiting and budget > 0 and len(self.running) < limit:
            r = self.waiting[0]
            total = r.total_blocks(bs)
            hits = self.kv.reserve(r.block_hashes, total)
            if hits is None:
                if not self.running and total > self.kv.capacity:
                    raise ValueError(
                        f"request {r.index} needs {total} KV blocks; {self.worker_id} has "
                        f"{self.kv.capacity} (raise kv_capacity_tokens or cut the trace)"
                    )
                break
            self.waiting.popleft()
            r.started = now
            r.cached_tokens = min(hits * bs, r.input_tokens - 1)
            r.prefill_done = r.context = r.cached_tokens
            r.committed = hits
            r.private_blocks = total - hits
            self.running.append(r)
            n = min(budget, r.input_tokens - r.prefill_done)
            chunks.append((r, n))
            budget -= n
        return chunks

    def _plan(self, now: float) -> None:
        """Chooses the next step's work and asks the loop to end it."""
        after_idle = not self._busy
        decodes = [r for r in self.running if r.prefill_done >= r.input_tokens]
        budget = self.profile.max_batched_tokens - len(decodes)
        chunks: list[tuple[SimRequest, int]] = []
        for r in self.running:
            left = r.input_tokens - r.prefill_done
            if left > 0 and budget > 0:
                n = min(budget, left)
                chunks.append((r, n))
                budget -= n
        chunks += self._admit(now, budget)
        self._decodes, self._chunks = decodes, chunks
        self._start = now
        self._version += 1
        self._invalidate()
        if not decodes and not chunks:
            self._busy = False
            self._steps = 0
            return
        self._busy = True
        p = self.profile
        ctx = p.decode_context([r.context for r in decodes])
        if chunks or len(decodes) != len(self.running):
            self._steps = 1
            pairs = sum(attn_pairs(n, r.prefill_done) for r, n in chunks)
            new = sum(n for _, n in chunks)
            duration = p.step_time(
                new, pairs, len(decodes), ctx, after_idle, prefill_chunks=len(chunks)
            )
        else:
            self._steps = min(r.decode_left for r in decodes)
            self._ff_a = p.decode_step_time(len(decodes), ctx)
            self._ff_b = p.kv_read_s * len(decodes)
            duration = self._stretch(self._steps)
        self._schedule(now + duration, self.index, self._version)

    def _stretch(self, k: int) -> float:
        """Duration of ``k`` fast-forwarded decode steps."""
        return k * self._ff_a + self._ff_b * k * (k - 1) / 2

    def _interrupt(self, now: float) -> None:
        """Cuts the running stretch at the end of the step in flight at ``now``."""
        elapsed = now - self._start
        lo, hi = 0, self._steps  # largest j with stretch(j) <= elapsed, by bisection
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self._stretch(mid) <= elapsed:
                lo = mid
            else:
                hi = mid - 1
        k = min(lo + 1, self._steps)
        if k < self._steps:
            self._steps = k
            self._version += 1
            self._schedule(self._start + self._stretch(k), self.index, self._version)
