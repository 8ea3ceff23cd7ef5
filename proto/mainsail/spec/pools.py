"""`spec.pools`: the worker pools by role (their replicas, resources and autoscaling) and the
shared KV cache pool.

The operator turns each pool into a ServingPool child; the autoscaler reads its bounds.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from mainsail.spec.spec_model import SpecModel


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
