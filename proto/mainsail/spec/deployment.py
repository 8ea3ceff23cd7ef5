"""`ModelDeployment`: the one typed source of the user's resource.

The same models are read by `mainsail up -f x.yaml` (local realization), by the operator (cluster
realization) and rendered into the CRD's OpenAPI schema (`mainsail.spec.crd`), so a field is
declared once. YAML keys are camelCase as Kubernetes users expect; Python attributes are
snake_case. Unknown keys are errors everywhere.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from mainsail.spec.kvhash import KVHashConfig
from mainsail.spec.network import NetworkSettings
from mainsail.spec.step_cost import StepCost
from mainsail.spec.tracing import Tracing

API_GROUP = "mainsail.dev"
API_VERSION = "v1alpha1"
KIND = "ModelDeployment"


class SpecModel(BaseModel):
    """Base: camelCase aliases, unknown keys refused, values immutable once read."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


_DOTDOT = re.compile(r"(^|/)\.\.(/|$)")


class ModelVolume(SpecModel):
    """What a cluster mounts at `model.path` (read-only, on the router and every worker pod):
    a PersistentVolumeClaim (the usual home of model weights on a cluster, as KServe's and
    llm-d's `pvc://` sources) or a directory of the node (`hostPath`: single-node and test
    clusters, or weights pre-staged on every node). `mainsail up` ignores it: locally the path
    is read as it is, so one YAML serves on a laptop and on a cluster."""

    claim_name: str | None = Field(
        None,
        min_length=1,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="Name of a PersistentVolumeClaim in the deployment's namespace (it must "
        "allow several readers, e.g. ReadOnlyMany, to serve more than one pod on many nodes).",
    )
    host_path: str | None = Field(
        None,
        min_length=1,
        max_length=4096,
        pattern=r"^/",
        description="Absolute directory on the node (no `..`).",
    )
    sub_path: str | None = Field(
        None,
        min_length=1,
        max_length=4096,
        pattern=r"^[^/]",
        description="Directory inside the volume holding the checkpoint (relative, no `..`).",
    )

    @model_validator(mode="after")
    def _one_source(self) -> ModelVolume:
        if (self.claim_name is None) == (self.host_path is None):
            raise ValueError("model.volume: set exactly one of `claimName` or `hostPath`")
        for name, value in (("hostPath", self.host_path), ("subPath", self.sub_path)):
            if value is not None and _DOTDOT.search(value):
                raise ValueError(f"model.volume.{name}: must not contain `..`")
        return self


class ModelSource(SpecModel):
    """Where the checkpoint comes from (Hugging Face layout: config, safetensors, tokenizer)."""

    name: str = Field(
        ...,
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._/:-]*$",
        description="Served model name: the `model` field clients send.",
    )
    path: str | None = Field(
        None,
        min_length=1,
        max_length=4096,
        description="Directory holding the checkpoint. On a cluster, `volume` is mounted here "
        "(without one, the images must contain it).",
    )
    volume: ModelVolume | None = Field(
        None,
        description="On a cluster: the volume mounted read-only at `path` on the router and "
        "worker pods. Needs an absolute `path`.",
    )
    generate: Literal["llama", "mixtral"] | None = Field(
        None,
        description="Generate a tiny deterministic checkpoint of this architecture instead of "
        "reading one (for local runs and tests; no model hub needed).",
    )
    seed: int = Field(0, ge=0, description="Weight seed when `generate` is set.")
    size: Literal["tiny", "small"] = Field(
        "tiny",
        description="Size of the generated checkpoint when `generate` is set: `tiny` (hidden "
        "64, 2 layers; forward passes nearly free, for tests) or `small` (hidden 256, 4 layers; "
        "prefill costs real CPU time, for benchmarks).",
    )

    @model_validator(mode="after")
    def _one_source(self) -> ModelSource:
        if (self.path is None) == (self.generate is None):
            raise ValueError("model: set exactly one of `path` or `generate`")
        if self.volume is not None and not (self.path or "").startswith("/"):
            raise ValueError("model.volume: needs an absolute `path` (where it is mounted)")
        return self


class ExpertParallelRange(SpecModel):
    """How many ranks a mixture-of-experts model's experts may be placed on; the worker
    starts at ``min`` and elastic expert parallelism moves within the range while serving."""

    min: int = Field(1, ge=1, le=1024, description="Expert-parallel ranks at start.")
    max: int = Field(1, ge=1, le=1024, description="Most expert-parallel ranks.")

    @model_validator(mode="after")
    def _ordered(self) -> ExpertParallelRange:
        if self.min > self.max:
            raise ValueError("expertParallel: min must be <= max")
        return self


class EngineSettings(SpecModel):
    """Engine knobs shared by every worker of the deployment."""

    block_size: int = Field(16, ge=1, le=1024, description="Tokens per KV block.")
    hash_seed: int = Field(0, ge=0, le=2**53, description="Seed of the KV block-hash chain.")
    max_model_len: int = Field(
        2048, ge=16, le=1_048_576, description="Longest context (prompt + output) in tokens."
    )
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="Weights and activations; `auto` reads config.json (float32 on CPU)."
    )
    max_num_seqs: int = Field(64, ge=1, le=4096, description="Most sequences in one batch.")
    max_batched_tokens: int = Field(
        512, ge=16, le=1_048_576, description="Token budget of one engine step (chunked prefill)."
    )
    num_kv_blocks: int | None = Field(
        None, ge=1, description="KV blocks per worker; default fits max_num_seqs full contexts."
    )
    tensor_parallel: int = Field(
        1,
        ge=1,
        le=64,
        description="Ranks each replica's model is split over (attention by head, MLP by rows); "
        "must divide the model's attention heads (checked when the worker starts).",
    )
    expert_parallel: ExpertParallelRange | None = Field(
        None,
        description="Mixture-of-experts models: ranks the experts are placed on (a range: "
        "elastic). Both bounds must be multiples of tensorParallel. Unset: experts are spread "
        "over the tensorParallel ranks.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where the engine runs; `auto` = cuda when a GPU is visible, else cpu."
    )

    @model_validator(mode="after")
    def _parallel(self) -> EngineSettings:
        ep = self.expert_parallel
        if ep is not None and (ep.min % self.tensor_parallel or ep.max % self.tensor_parallel):
            raise ValueError(
                "engine: expertParallel.min and .max must be multiples of tensorParallel"
            )
        return self

    @property
    def ranks(self) -> int:
        """Most rank actors one replica runs (1 = the model runs in the worker itself)."""
        top = self.expert_parallel.max if self.expert_parallel is not None else 1
        return max(self.tensor_parallel, top) if self.sharded else 1

    @property
    def sharded(self) -> bool:
        """Whether replicas run the model in rank actors."""
        return self.tensor_parallel > 1 or self.expert_parallel is not None

    def kv_hash(self) -> KVHashConfig:
        """The hashing parameters every party must share."""
        return KVHashConfig(block_size=self.block_size, hash_seed=self.hash_seed)


class Resources(SpecModel):
    """What one replica of a pool asks of a node."""

    gpus: int = Field(0, ge=0, le=64, description="GPUs per replica (nvidia.com/gpu).")
    gpu_type: str | None = Field(
        None, description="Node label value for the GPU product, used as a node selector."
    )
    cpu: str = Field("1", description="CPU request, Kubernetes quantity.")
    memory: str = Field("4Gi", description="Memory request, Kubernetes quantity.")


class Autoscaling(SpecModel):
    """Bounds and targets of one pool's autoscaler (signals come from the router)."""

    enabled: bool = False
    min_replicas: int = Field(1, ge=0, le=10_000, description="0 allows scale to zero.")
    max_replicas: int = Field(4, ge=1, le=10_000)
    target_queue_depth: float = Field(
        4.0, gt=0, description="Waiting requests per replica the autoscaler aims for."
    )
    target_kv_utilization: float = Field(
        0.8, gt=0, le=1, description="KV-cache fraction in use per replica to aim for."
    )
    scale_down_delay_seconds: int = Field(
        120, ge=0, description="How long a lower recommendation must hold before acting."
    )

    @model_validator(mode="after")
    def _bounds(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError("autoscaling: minReplicas must be <= maxReplicas")
        return self


class Pool(SpecModel):
    """One role's workers (encode, prefill, decode or unified)."""

    replicas: int = Field(1, ge=0, le=10_000, description="Desired workers.")
    resources: Resources = Resources()
    autoscaling: Autoscaling = Autoscaling()
    node_selector: dict[str, str] = Field(default_factory=dict)


class CachePool(SpecModel):
    """The shared KV tier: Redis in the cluster, or an external URL."""

    enabled: bool = True
    external_url: str | None = Field(
        None, pattern=r"^rediss?://", description="Use this Redis instead of running one."
    )
    replicas: int = Field(1, ge=0, le=64)
    max_memory: str = Field("1Gi", description="Redis maxmemory; blocks are evicted LRU.")
    ttl_seconds: int = Field(0, ge=0, description="0 keeps blocks until LRU evicts them.")


class Pools(SpecModel):
    """Worker pools by role. `unified` serves prefill and decode in one worker."""

    unified: Pool | None = None
    encode: Pool | None = None
    prefill: Pool | None = None
    decode: Pool | None = None
    cache: CachePool = CachePool()

    @model_validator(mode="after")
    def _roles(self) -> Pools:
        if (self.prefill is None) != (self.decode is None):
            raise ValueError("pools: prefill and decode must be both set or both unset")
        if self.unified is None and self.prefill is None:
            raise ValueError("pools: set `unified`, or both `prefill` and `decode`")
        return self

    def worker_pools(self) -> dict[str, Pool]:
        """Role name to pool, for the roles that are set (cache excluded)."""
        roles = {
            "unified": self.unified,
            "encode": self.encode,
            "prefill": self.prefill,
            "decode": self.decode,
        }
        return {name: pool for name, pool in roles.items() if pool is not None}


class ScorerWeight(SpecModel):
    """One scorer of the routing profile and its weight."""

    name: str = Field(..., min_length=1)
    weight: float = Field(1.0, ge=0, le=1000)


class RoutingProfile(SpecModel):
    """Filters, weighted scorers and a picker, by plugin name (see router/scheduling)."""

    filters: list[str] = Field(default_factory=lambda: ["healthy", "role", "capacity"])
    scorers: list[ScorerWeight] = Field(
        default_factory=lambda: [
            ScorerWeight(name="prefill-time", weight=2.0),
            ScorerWeight(name="queue-depth", weight=1.0),
            ScorerWeight(name="running-requests", weight=1.0),
            ScorerWeight(name="kv-utilization", weight=0.5),
        ]
    )
    picker: Literal["max-score", "weighted-random", "round-robin"] = Field(
        "max-score", description="How one worker is chosen from the scored candidates."
    )


class Rebalance(SpecModel):
    """Automatic live migration (the router's planner, `router/routing/rebalance.py`).

    Every `intervalSeconds` the router compares workers' load ((running + waiting) / max
    sequences, from heartbeats) and moves streaming requests (with their KV): a stream whose
    time per output token reached `tpotRisk` of its target, off a worker busier by `loadGap`
    than the lightest (SLO rescue); while the busiest has at least `minWaiting` requests
    queued inside it and another is lighter by at least `loadGap` with a free slot, its
    shortest-context stream (load balance); the longest stream of a worker with requests
    queued and its KV cache at least `kvHighWatermark` full, to the emptiest cache (KV
    de-fragmentation). At most `maxMovesPerRound` per round. Drains are planned the same way
    whether or not this is enabled. Off by default.
    """

    enabled: bool = False
    interval_seconds: float = Field(2.0, gt=0, le=3600)
    min_waiting: int = Field(2, ge=1, le=10_000)
    load_gap: float = Field(0.25, gt=0, le=1)
    max_moves_per_round: int = Field(4, ge=1, le=1000)
    tpot_risk: float = Field(
        0.9,
        gt=0,
        le=10,
        description="A stream is at risk when its observed time per output token reaches "
        "this fraction of its TPOT target.",
    )
    kv_high_watermark: float = Field(
        0.9,
        gt=0,
        le=1,
        description="KV cache usage from which a worker with requests queued gives a stream "
        "away (de-fragmentation).",
    )


class RouterAuth(SpecModel):
    """Credentials of the router, from a Secret in the deployment's namespace."""

    secret_name: str | None = Field(
        None,
        min_length=1,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="Secret with `apiKeys` (comma-separated client keys: `/v1/*` and gRPC then "
        "need `Authorization: Bearer <key>`) and/or `adminToken` (for `/workers`, "
        "`/requests/*`). Unset: the router is open, as on a laptop.",
    )


class FlowControl(SpecModel):
    """The router's queue of requests waiting for a worker (issue 14): one queue per priority
    band, inside a band one per tenant (its API key, an operator-mapped tenant header, or, on
    an open router, the `x-mainsail-fairness-id` header), served fairly across tenants and
    earliest deadline first within one. `maxQueue` bounds them all together."""

    max_per_band: int = Field(
        4096, ge=1, description="Requests one priority band may hold waiting before 429."
    )
    max_per_tenant: int = Field(
        1024,
        ge=1,
        description="Requests one tenant may hold waiting in one band before 429 (so a flood "
        "from one tenant fills its own queue, not everyone's).",
    )

    @model_validator(mode="after")
    def _nested(self) -> FlowControl:
        if self.max_per_tenant > self.max_per_band:
            raise ValueError("router.flow: maxPerTenant must be <= maxPerBand")
        return self


class Admission(SpecModel):
    """Early refusal of requests no worker can serve within their TTFT target: the router
    predicts each candidate worker's time to first token with the engine's step cost model
    (its queue of prefill, the request's uncached prompt, the running decodes) and answers
    429 with the reason and `Retry-After` instead of letting the request wait past it."""

    step_cost: StepCost | None = Field(
        None,
        description="The workers' step cost model (`mainsail.spec.step_cost`; fit it from "
        "measured steps with `python -m mainsail.sim.calibrate`, or take a profile of the "
        "simulator's gpu_profiles.yaml). Unset: no prediction, only the bounded queues refuse.",
    )
    headroom: float = Field(
        1.0,
        gt=0,
        le=100,
        description="A request is refused when its predicted TTFT exceeds headroom x its "
        "target (above 1 tolerates a pessimistic model, below 1 corrects an optimistic one).",
    )


class RouterSettings(SpecModel):
    """The global router in front of the pools."""

    replicas: int = Field(1, ge=1, le=100)
    http_port: int = Field(8000, ge=1, le=65535)
    grpc_port: int = Field(50051, ge=1, le=65535)
    fleet_port: int = Field(
        50052,
        ge=1,
        le=65535,
        description="Where workers register with the router (the Registry, worker token and "
        "mutual TLS); not a client port: only the deployment's worker pods may reach it.",
    )
    profile: RoutingProfile = RoutingProfile()
    kv_index_max_blocks: int = Field(
        1_000_000, ge=1, description="Cap on the global KV index (block ids kept)."
    )
    max_queue: int = Field(
        4096, ge=1, description="Requests admitted but not yet dispatched before 429."
    )
    rebalance: Rebalance = Rebalance()
    auth: RouterAuth = RouterAuth()
    cold_start_timeout_seconds: int = Field(
        120,
        ge=1,
        le=3600,
        description="Seconds the router holds a request while no worker is registered (pools "
        "scaled to zero: the held request is the demand that wakes them) before answering 503.",
    )
    flow: FlowControl = FlowControl()
    admission: Admission = Admission()

    @model_validator(mode="after")
    def _distinct_ports(self) -> RouterSettings:
        if len({self.http_port, self.grpc_port, self.fleet_port}) < 3:
            raise ValueError("router: httpPort, grpcPort and fleetPort must differ")
        return self


class SLOClass(SpecModel):
    """A named service class clients select per request."""

    name: str = Field(..., min_length=1, max_length=63, pattern=r"^[a-z0-9-]+$")
    priority: int = Field(
        0,
        ge=-100,
        le=100,
        description="Priority band: higher is served first and shed last. Negative classes "
        "are sheddable: they run only on spare capacity and are dropped first under pressure.",
    )
    ttft_ms: float | None = Field(None, gt=0, description="Time-to-first-token target.")
    tpot_ms: float | None = Field(None, gt=0, description="Time-per-output-token target.")


class RequestTargetBounds(SpecModel):
    """What a request may ask for itself (`ttft_ms` / `tpot_ms` fields or headers): a client
    asking tighter than `min*` would jump the engine's deadline order, looser than `max*`
    would hold capacity. Out of bounds is a 400 naming the field."""

    min_ttft_ms: float = Field(50, gt=0, description="Tightest TTFT target a request may ask.")
    max_ttft_ms: float = Field(600_000, gt=0, description="Loosest TTFT target a request may ask.")
    min_tpot_ms: float = Field(5, gt=0, description="Tightest TPOT target a request may ask.")
    max_tpot_ms: float = Field(60_000, gt=0, description="Loosest TPOT target a request may ask.")
    max_priority: int = Field(
        0,
        ge=0,
        le=100,
        description="Highest band a request's own `priority` field may raise it to (higher "
        "values are lowered to this). 0: only SLO classes set bands, so no client can jump "
        "the queue by asking.",
    )

    @model_validator(mode="after")
    def _ordered(self) -> RequestTargetBounds:
        if self.min_ttft_ms > self.max_ttft_ms:
            raise ValueError("slo.requestBounds: minTtftMs must be <= maxTtftMs")
        if self.min_tpot_ms > self.max_tpot_ms:
            raise ValueError("slo.requestBounds: minTpotMs must be <= maxTpotMs")
        return self


class SLO(SpecModel):
    """Latency targets; `ttftMs`/`tpotMs` apply when a request names no class (and the class
    sets none), `requestBounds` limits what a request may ask for itself."""

    ttft_ms: float = Field(2000, gt=0)
    tpot_ms: float = Field(200, gt=0)
    classes: list[SLOClass] = Field(default_factory=list)
    request_bounds: RequestTargetBounds = RequestTargetBounds()


class Adapter(SpecModel):
    """A LoRA adapter clients select with `model: <base>:<adapter>` or the adapter field."""

    name: str = Field(..., min_length=1, max_length=63, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    path: str | None = Field(None, description="Adapter directory (PEFT layout).")
    generate_rank: int | None = Field(
        None, ge=1, le=256, description="Generate a tiny random adapter of this rank (tests)."
    )


class ModelDeploymentSpec(SpecModel):
    """The spec of a `ModelDeployment`."""

    model: ModelSource
    engine: EngineSettings = EngineSettings()
    pools: Pools = Pools(unified=Pool())
    router: RouterSettings = RouterSettings()
    slo: SLO = SLO()
    adapters: list[Adapter] = Field(default_factory=list)
    network: NetworkSettings = NetworkSettings()
    tracing: Tracing = Tracing()


class ObjectMeta(SpecModel):
    """The part of Kubernetes metadata a local run reads."""

    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)

    # 55, not 63: children append suffixes such as "-unified" and must stay valid names.
    name: str = Field(..., min_length=1, max_length=55, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    namespace: str = "default"


class ModelDeployment(SpecModel):
    """The whole resource as written in YAML (apiVersion, kind, metadata, spec)."""

    api_version: Literal["mainsail.dev/v1alpha1"] = Field(
        "mainsail.dev/v1alpha1", alias="apiVersion"
    )
    kind: Literal["ModelDeployment"] = "ModelDeployment"
    metadata: ObjectMeta
    spec: ModelDeploymentSpec


def load_model_deployment(document: dict[str, Any]) -> ModelDeployment:
    """Validate one parsed YAML document; raises `pydantic.ValidationError` naming the field."""
    return ModelDeployment.model_validate(document)
