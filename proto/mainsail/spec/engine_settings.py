"""`spec.engine`: the engine knobs every worker shares (KV blocks, batch limits, dtype, device,
tensor and expert parallelism).

One model read by the workers (engine config), the operator (rank count of a pod) and the
router (the KV block-hash parameters), so the parallel layout is validated once.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from mainsail.spec.kvhash import KVHashConfig
from mainsail.spec.spec_model import SpecModel


class ExpertParallelRange(SpecModel):
    """How many ranks a mixture-of-experts model's experts may be placed on; the worker
    starts at ``min`` and elastic expert parallelism moves within the range while serving.
    The operator's expert-parallel autoscaler picks the degree from the pool's load and
    expert load (docs/operator.md, "Expert-parallel autoscaling")."""

    min: int = Field(1, ge=1, le=1024, description="Expert-parallel ranks at start.")
    max: int = Field(1, ge=1, le=1024, description="Most expert-parallel ranks.")
    target_requests_per_rank: float = Field(
        4.0,
        gt=0,
        le=100_000,
        description="Requests (running + waiting, per worker) one expert rank should carry: "
        "the autoscaler picks the smallest degree whose ranks, as loaded by the measured "
        "expert load, carry them.",
    )
    cooldown_seconds: int = Field(
        30, ge=0, le=86_400, description="No change of degree within this long of the last."
    )
    scale_down_delay_seconds: int = Field(
        60,
        ge=0,
        le=86_400,
        description="Fewer ranks only once the load has asked for fewer this long.",
    )

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
