"""What the scheduling profile sees of each registered worker, and the metrics of its choices.

Why apart from dispatch: building a `WorkerSnapshot` per worker per decision is on every
request's path, so what a registration fixes (role, adapters, KV hash fingerprint, limits) is
computed once per registered entry, and only load and the router's own counts are read each
time. Scheduling metrics (decision time, per-plugin times, expected hit blocks by index mode)
are recorded after the request is on its way, off its latency.

A snapshot's `outstanding` is the worker's total in flight: this router's own live count plus
what other router replicas have there per the worker's last report (`fleet.load_merge`).
"""

from __future__ import annotations

from typing import Any

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.router.fleet.load_merge import merged_in_flight
from mainsail.router.fleet.registry import WorkerEntry, WorkerRegistry
from mainsail.router.metrics import RouterMetrics
from mainsail.router.scheduling import PluginTiming, WorkerSnapshot
from mainsail.spec.kv_cost import FetchCostModel
from mainsail.spec.step_cost import StepCost

_Static = tuple[WorkerEntry, str, frozenset[str], str, int, int]


class WorkerViews:
    """`WorkerSnapshot`s of registry entries, with each entry's fixed part cached.

    ``block_size``: the deployment's KV block, tokens (every registered worker hashes with it),
    for the cost model a worker reports. ``step_cost``: the workers' engine step cost model
    (`spec.router.admission.stepCost`), which the `ttft` scorer replays; None when unset.
    """

    def __init__(
        self, registry: WorkerRegistry, block_size: int = 16, step_cost: StepCost | None = None
    ) -> None:
        self.registry = registry
        self.block_size = block_size
        self.step_cost = step_cost
        self._static: dict[str, _Static] = {}
        self._costs: dict[str, tuple[pb.LoadSnapshot, FetchCostModel]] = {}

    def kv_cost(self, worker_id: str, load: pb.LoadSnapshot) -> FetchCostModel:
        """The worker's reported cost model (defaults for what it has not measured yet),
        rebuilt only when a new load report arrived."""
        cached = self._costs.get(worker_id)
        if cached is not None and cached[0] is load:
            return cached[1]
        report = load.kv_cost
        default = FetchCostModel(block_bytes=max(0, report.block_bytes), block_size=self.block_size)
        model = FetchCostModel(
            block_bytes=default.block_bytes,
            block_size=self.block_size,
            rtt_s=report.tier_rtt_s if report.tier_rtt_s > 0 else default.rtt_s,
            bandwidth_bps=(
                report.tier_bandwidth_bps
                if report.tier_bandwidth_bps > 0
                else default.bandwidth_bps
            ),
            prefill_s_per_token=(
                report.prefill_s_per_token
                if report.prefill_s_per_token > 0
                else default.prefill_s_per_token
            ),
        )
        if len(self._costs) > 2 * len(self.registry) + 64:
            self._costs.clear()  # workers that left; bounded under churn
        self._costs[worker_id] = (load, model)
        return model

    def snapshot(self, entry: WorkerEntry) -> WorkerSnapshot:
        """The worker as the profile sees it now (latest load report, router's own counts)."""
        cached = self._static.get(entry.worker_id)
        if cached is None or cached[0] is not entry:
            info = entry.info
            cached = (
                entry,
                info.role or "unified",
                frozenset(info.adapters),
                entry.fingerprint,
                info.max_num_seqs,
                info.max_model_len,
            )
            if len(self._static) > 2 * len(self.registry) + 64:
                self._static.clear()  # workers that left; bounded under churn
            self._static[entry.worker_id] = cached
        _, role, adapters, fingerprint, max_num_seqs, max_model_len = cached
        load = entry.load
        return WorkerSnapshot(
            worker_id=entry.worker_id,
            role=role,
            healthy=True,
            running=load.running,
            waiting=load.waiting,
            max_num_seqs=max_num_seqs or load.max_num_seqs or 1,
            kv_blocks_used=load.kv_blocks_used,
            kv_blocks_total=load.kv_blocks_total,
            adapters=adapters,
            max_model_len=max_model_len,
            outstanding=merged_in_flight(entry.outstanding, entry.others),
            hash_fingerprint=fingerprint,
            pending_prefill_tokens=max(load.pending_prefill_tokens, entry.pending_prefill),
            kv_cost=self.kv_cost(entry.worker_id, load),
            kv_tier_id=load.kv_cost.tier_id,
            kv_fetch_policy=load.kv_cost.fetch_policy if load.kv_cost.tier_id else "",
            step_cost=self.step_cost,
        )


class ScheduleRecorder:
    """Buffers each decision's timings and flushes them to the metrics when asked."""

    def __init__(self, metrics: RouterMetrics) -> None:
        self.metrics = metrics
        self._plugin: dict[tuple[str, str], Any] = {}  # labelled children, looked up once
        self._hits: dict[str, Any] = {}
        self._pending: list[tuple[float, tuple[PluginTiming, ...], str, int]] = []

    def add(self, elapsed: float, timings: tuple[PluginTiming, ...], mode: str, depth: int) -> None:
        """One decision: seconds taken, per-plugin timings, index mode ("" if none), hit depth."""
        self._pending.append((elapsed, timings, mode, depth))

    def flush(self) -> None:
        """Record every buffered decision."""
        for elapsed, timings, mode, depth in self._pending:
            self.metrics.schedule.observe(elapsed)
            for timing in timings:
                key = (timing.kind, timing.name)
                child = self._plugin.get(key)
                if child is None:
                    child = self.metrics.plugin.labels(f"{timing.kind}:{timing.name}")
                    self._plugin[key] = child
                child.observe(timing.seconds)
            if mode:
                hit_child = self._hits.get(mode)
                if hit_child is None:
                    hit_child = self._hits[mode] = self.metrics.expected_hit_blocks.labels(mode)
                hit_child.inc(depth)
        self._pending.clear()
