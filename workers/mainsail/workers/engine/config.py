"""`EngineConfig`: the knobs of one engine instance (paging, batching, dtype, device).

Built from the deployment's `EngineSettings` so that block size and hash seed are the ones
the router uses (see `mainsail.spec.kvhash`); a mismatch would silently break KV-aware routing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mainsail.spec.engine_settings import EngineSettings
from mainsail.spec.kvhash import HASH_ALGORITHM, KVHashConfig
from mainsail.workers.kvtier import FETCH_POLICIES, FetchPolicy, KVTier, RedisKVTier, ShardedKVTier

KVTierSource = KVTier | Callable[[str], KVTier]
"""A tier, or a factory called with the model's KV namespace (`kv_namespace`)."""


@dataclass(frozen=True)
class EngineConfig:
    """Engine settings; validated on construction (raises ValueError).

    * ``block_size``: tokens per KV block, and the unit of prefix hashing (default 16, as the
      router's default).
    * ``num_kv_blocks``: KV blocks in the cache; ``None`` sizes it so ``max_num_seqs``
      sequences of ``max_model_len`` tokens fit at once.
    * ``max_model_len``: longest prompt + output in tokens.
    * ``max_num_seqs``: most sequences running in one step.
    * ``max_batched_tokens``: token budget of one step, shared by prefill chunks and decodes;
      longer prompts are prefilled in chunks.
    * ``dtype``: ``auto`` means float32 on CPU, the checkpoint's dtype elsewhere.
    * ``hash_seed``: seed of the KV block-hash chain.
    * ``device``: torch device string ("cpu", "cuda", "cuda:1").
    * ``num_threads``: torch intra-op threads for this process; ``None`` leaves torch's
      default. On a shared CPU, 1 avoids threads spinning against each other.
    * ``kv_tier``: the shared KV tier (Redis), or a factory given the model's KV namespace
      (e.g. `RedisTierFactory`); ``None`` = no tier: local prefix cache only.
    * ``kv_tier_fetch``: ``auto`` fetches a prompt's blocks from the tier when the cost model
      says it beats recomputing them; ``always`` / ``never`` force it (tests, benchmarks).
      Writing committed blocks through to the tier happens in every mode.
    * ``kv_tier_write_queue_blocks``: blocks waiting to be written at most (each a copy of
      one block); beyond it blocks are dropped and counted, never waited for.
    * ``tensor_parallel``: ranks the model is split over (attention by head, MLP by rows,
      vocabulary by slice); more than 1 runs the model in Ray actors (`mainsail.workers.parallel`).
    * ``expert_parallel``: ranks a mixture-of-experts model's experts are placed on; ``None``
      spreads them over the tensor-parallel ranks. Any value (even 1) runs the model in Ray
      actors, so that the degree can change while serving (`Engine.scale_experts`).
    * ``expert_parallel_max``: the most expert ranks this worker may be scaled to (the
      deployment's ``expertParallel.max``); while it exceeds the current degree, up to
      ``warm_expert_ranks`` spare rank processes are kept started and idle (torch imported,
      no weights) so that a scale-up only loads experts into running processes.
    * ``warm_expert_ranks``: that cap (0 = no spare ranks).
    * ``rank_resources``: Ray resources of one rank's placement-group bundle; ``None`` = one
      CPU (plus one GPU when ``device`` is CUDA).
    * ``adapters``: LoRA adapters loaded at start, name -> directory in PEFT layout; requests
      naming any other adapter are refused. All stay resident (no eviction).
    """

    block_size: int = 16
    num_kv_blocks: int | None = None
    max_model_len: int = 2048
    max_num_seqs: int = 64
    max_batched_tokens: int = 512
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    hash_seed: int = 0
    device: str = "cpu"
    num_threads: int | None = None
    kv_tier: KVTierSource | None = None
    kv_tier_fetch: FetchPolicy = "auto"
    kv_tier_write_queue_blocks: int = 256
    adapters: Mapping[str, Path] = field(default_factory=dict)
    tensor_parallel: int = 1
    expert_parallel: int | None = None
    expert_parallel_max: int | None = None
    warm_expert_ranks: int = 1
    rank_resources: Mapping[str, float] | None = None

    def __post_init__(self) -> None:
        checks = {
            "block_size": 1 <= self.block_size <= 4096,
            "num_kv_blocks": self.num_kv_blocks is None or self.num_kv_blocks >= 1,
            "max_model_len": self.max_model_len >= 1,
            "max_num_seqs": self.max_num_seqs >= 1,
            "max_batched_tokens": self.max_batched_tokens >= 1,
            "dtype": self.dtype in ("auto", "float32", "float16", "bfloat16"),
            "hash_seed": 0 <= self.hash_seed < 2**64,
            "num_threads": self.num_threads is None or self.num_threads >= 1,
            "kv_tier": self.kv_tier is None
            or callable(self.kv_tier)
            or isinstance(self.kv_tier, RedisKVTier | ShardedKVTier),
            "kv_tier_fetch": self.kv_tier_fetch in FETCH_POLICIES,
            "kv_tier_write_queue_blocks": self.kv_tier_write_queue_blocks >= 1,
            "adapters": all(isinstance(n, str) and n for n in self.adapters),
            "tensor_parallel": 1 <= self.tensor_parallel <= 64,
            "expert_parallel": self.expert_parallel is None or 1 <= self.expert_parallel <= 1024,
            "expert_parallel_max": self.expert_parallel_max is None
            or 1 <= self.expert_parallel_max <= 1024,
            "warm_expert_ranks": 0 <= self.warm_expert_ranks <= 8,
            "rank_resources": self.rank_resources is None
            or all(v >= 0 for v in self.rank_resources.values()),
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"EngineConfig.{name} is invalid: {getattr(self, name)!r}")

    @property
    def sharded(self) -> bool:
        """Whether the model runs in rank actors rather than in this process."""
        return self.tensor_parallel > 1 or self.expert_parallel is not None

    @property
    def total_kv_blocks(self) -> int:
        """Blocks actually allocated (the explicit value or the default sizing)."""
        if self.num_kv_blocks is not None:
            return self.num_kv_blocks
        return self.max_num_seqs * -(-self.max_model_len // self.block_size)

    def kv_hash(self) -> KVHashConfig:
        """The hashing parameters the router must share with this engine."""
        return KVHashConfig(
            block_size=self.block_size, hash_seed=self.hash_seed, algorithm=HASH_ALGORITHM
        )

    @staticmethod
    def resolve_device(setting: str) -> str:
        """The deployment's ``engine.device``: ``auto`` is ``cuda`` when torch sees a GPU."""
        if setting != "auto":
            return setting
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    @classmethod
    def from_engine_settings(
        cls,
        settings: EngineSettings,
        device: str = "cpu",
        kv_tier: KVTierSource | None = None,
        adapters: Mapping[str, Path] | None = None,
    ) -> EngineConfig:
        """The config a worker of a deployment with these settings runs with."""
        return cls(
            block_size=settings.block_size,
            num_kv_blocks=settings.num_kv_blocks,
            max_model_len=settings.max_model_len,
            max_num_seqs=settings.max_num_seqs,
            max_batched_tokens=settings.max_batched_tokens,
            dtype=settings.dtype,
            hash_seed=settings.hash_seed,
            device=device,
            kv_tier=kv_tier,
            adapters=dict(adapters or {}),
            tensor_parallel=settings.tensor_parallel,
            expert_parallel=(
                settings.expert_parallel.min if settings.expert_parallel is not None else None
            ),
            expert_parallel_max=(
                settings.expert_parallel.max if settings.expert_parallel is not None else None
            ),
        )
