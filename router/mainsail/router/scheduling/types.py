"""The records scheduling policies read and return.

Why plain frozen dataclasses: a routing decision is a pure function of one `SchedulingContext`
(style.md, principle 3). Everything a plugin may look at travels in these records, so a test or
the simulator can build a context by hand and replay a decision exactly; nothing is read from a
shared mutable bag. Validation happens here, at the edge, with `ValueError`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

from mainsail.spec.kv_cost import FetchCostModel
from mainsail.spec.step_cost import StepCost

ROLES = frozenset({"unified", "prefill", "decode", "encode"})


@dataclass(frozen=True, slots=True)
class WorkerSnapshot:
    """One worker as the router last saw it (worker metrics plus the router's own counts).

    Counts are in requests, KV sizes in blocks, lengths in tokens.
    """

    worker_id: str
    role: str  # "unified" | "prefill" | "decode" | "encode"
    healthy: bool
    running: int  # sequences in the worker's running batch (worker-reported)
    waiting: int  # sequences queued at the worker, not yet admitted (worker-reported)
    max_num_seqs: int  # batch capacity of the worker, in sequences
    kv_blocks_used: int
    kv_blocks_total: int  # 0 means "not reported yet"
    adapters: frozenset[str]  # LoRA adapters currently loaded
    max_model_len: int  # longest context (prompt + output), tokens
    outstanding: int  # in flight there: this router's own (live) + other routers' (reported)
    hash_fingerprint: str  # `KVHashConfig.fingerprint()` the worker hashes with
    pending_prefill_tokens: int = 0  # prompt tokens ahead of a new request (see docs/protocol.md)
    kv_cost: FetchCostModel | None = None  # the worker's measured KV cost model (None: unknown)
    kv_tier_id: str = ""  # the shared KV tier it reads (`LoadSnapshot.kv_cost.tier_id`); "" = none
    kv_fetch_policy: str = ""  # "auto" | "always" | "never"; "" = no tier
    step_cost: StepCost | None = None  # the engine's step cost model (None: not configured)

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"worker {self.worker_id!r}: unknown role {self.role!r}")
        for name in (
            "running",
            "waiting",
            "kv_blocks_used",
            "kv_blocks_total",
            "outstanding",
            "pending_prefill_tokens",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"worker {self.worker_id!r}: {name} must be >= 0")
        if self.max_num_seqs < 1 or self.max_model_len < 1:
            raise ValueError(f"worker {self.worker_id!r}: max_num_seqs/max_model_len must be >= 1")


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """What scheduling needs to know about one request.

    `block_hashes` are the chained ids of the prompt's full blocks, computed once with
    `mainsail.spec.kvhash.chain_hashes` (adapter mixed into the seed when one is set).
    """

    request_id: str
    block_hashes: tuple[int, ...]
    prompt_tokens: int
    max_tokens: int
    adapter: str | None = None
    role: str = "unified"  # the role of worker wanted for this step
    slo_class: str | None = None
    priority: int = 0

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"request {self.request_id!r}: unknown role {self.role!r}")
        if self.prompt_tokens < 0 or self.max_tokens < 0:
            raise ValueError(f"request {self.request_id!r}: token counts must be >= 0")


@dataclass(frozen=True, slots=True)
class SchedulingContext:
    """Everything one decision reads.

    `prefix_hits` maps worker id to the number of leading blocks of the request cached there
    (device or host memory), computed once by the KV index before scoring (workers absent from
    it have 0). `tier_hits` maps worker id to the leading blocks it can read from its shared
    KV tier (Redis), whoever wrote them (`shared_tier_hits`). `now` is in seconds on the
    caller's clock.
    """

    request: RequestInfo
    workers: tuple[WorkerSnapshot, ...]
    prefix_hits: Mapping[str, int] = field(default_factory=dict)
    tier_hits: Mapping[str, int] = field(default_factory=dict)
    now: float = 0.0


@dataclass(frozen=True, slots=True)
class PluginTiming:
    """Time one plugin took for one decision, in seconds."""

    kind: str  # "filter" | "scorer" | "picker"
    name: str
    seconds: float
    kept: int | None = None  # a filter's result: candidates it let through


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one scheduling pass.

    `worker_id` is None when no worker passed the filters; `reason` then says which filter
    removed the last candidates. `scores` holds the weighted total of every scored candidate;
    `components` the raw [0, 1] score of each scorer for the chosen worker.
    """

    worker_id: str | None
    scores: Mapping[str, float] = field(default_factory=dict)
    components: Mapping[str, float] = field(default_factory=dict)
    reason: str | None = None
    timings: tuple[PluginTiming, ...] = ()


SNAPSHOT_FIELDS = frozenset(f.name for f in dataclasses.fields(WorkerSnapshot))
"""Names a plugin may list in `reads` (plus `CONTEXT_FIELDS`)."""

CONTEXT_FIELDS = frozenset({"prefix_hits", "tier_hits", "request"})
