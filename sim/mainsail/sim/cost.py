"""Cost model of one engine step, per GPU type.

Why linear: a continuous-batching engine runs one forward pass per step over a mix of prefill
chunks and decode tokens. Its time is well described (Vidur, Splitwise-sim, DistServe use the
same shape) by a fixed part plus terms linear in the work:

    step_s = step_overhead_s                              weights read once, launch, sampling
           + token_s      * (prefill tokens + decode seqs)  GEMMs, per token in the batch
           + attn_pair_s  * Σ_chunks n * (c + n / 2)        prefill attention: n new tokens over
                                                             c cached + the chunk's own causal half
           + kv_read_s    * Σ_decode context tokens          decode attention reads the KV cache

How decode attention reads the cache is the engine's: paged-attention kernels read each
sequence's own context (``decode_attention: sum``), while an engine that pads the batch's block
tables to the longest sequence — Mainsail's CPU engine does — reads ``B * max context``
(``decode_attention: padded``). Calibration batches have equal contexts, so both fit the same
``kv_read_s``; a replay's mixed lengths tell them apart.

A step that starts after the worker sat idle costs ``idle_wake_s`` more (thread wake-up, cold
CPU caches, clock ramp-up). On a GPU it is small; on the CPU engine it was about 2 ms per
request at the light loads of a replay, twice a small prefill's own time, and calibration
measured back-to-back never sees it.

Every term is linear in its parameter, so `mainsail.sim.calibrate` fits them by non-negative
least squares from measured steps. Profiles live in ``gpu_profiles.yaml`` next to this module,
each with its sources; they are approximate and meant for relative comparisons and capacity
planning, not for promises about absolute latency.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

PROFILES_FILE = Path(__file__).with_name("gpu_profiles.yaml")


class GPUProfile(BaseModel):
    """One GPU type (and model) as the simulator sees it. Times in seconds."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(..., min_length=1)
    description: str = ""
    sources: list[str] = Field(default_factory=list, description="Where the figures come from.")
    step_overhead_s: float = Field(..., ge=0, description="Fixed time of one engine step.")
    token_s: float = Field(..., ge=0, description="Per token in the batch (GEMM cost).")
    attn_pair_s: float = Field(..., ge=0, description="Per (new token x context token) pair.")
    kv_read_s: float = Field(..., ge=0, description="Per context token read by a decode step.")
    idle_wake_s: float = Field(
        0.0, ge=0, description="Extra time of a step that starts after the worker was idle."
    )
    decode_attention: Literal["sum", "padded"] = Field(
        "sum",
        description="Context a decode step reads: each sequence's own (`sum`) or the batch "
        "padded to its longest sequence (`padded`).",
    )
    kv_capacity_tokens: int = Field(..., ge=1, description="KV cache size in tokens.")
    max_num_seqs: int = Field(256, ge=1, description="Most sequences in one step.")
    max_batched_tokens: int = Field(8192, ge=1, description="Token budget of one step.")

    def kv_capacity_blocks(self, block_size: int) -> int:
        """KV cache size in whole blocks of ``block_size`` tokens."""
        return max(1, self.kv_capacity_tokens // block_size)

    def step_time(
        self,
        prefill_tokens: int,
        attn_pairs: float,
        decode_seqs: int,
        decode_context: int,
        after_idle: bool = False,
    ) -> float:
        """Seconds for one step (see the module docstring for the formula)."""
        return (
            self.step_overhead_s
            + (self.idle_wake_s if after_idle else 0.0)
            + self.token_s * (prefill_tokens + decode_seqs)
            + self.attn_pair_s * attn_pairs
            + self.kv_read_s * decode_context
        )

    def decode_context(self, contexts: list[int]) -> int:
        """Context tokens a decode step over sequences of ``contexts`` reads."""
        if not contexts:
            return 0
        return len(contexts) * max(contexts) if self.decode_attention == "padded" else sum(contexts)

    def decode_step_time(self, batch: int, context_tokens: int) -> float:
        """Seconds for a decode-only step of ``batch`` sequences holding ``context_tokens``."""
        return self.step_time(0, 0.0, batch, context_tokens)

    def prefill_time(self, uncached_tokens: int, cached_tokens: int = 0) -> float:
        """Seconds to prefill one prompt alone, in chunks of ``max_batched_tokens``."""
        total = 0.0
        done = 0
        while done < uncached_tokens:
            n = min(self.max_batched_tokens, uncached_tokens - done)
            c = cached_tokens + done
            total += self.step_time(n, n * (c + n / 2), 0, 0)
            done += n
        return total


def attn_pairs(new_tokens: int, context_before: int) -> float:
    """Attention pairs of a prefill chunk: ``n * (c + n / 2)``."""
    return new_tokens * (context_before + new_tokens / 2)


def load_profiles(path: Path | None = None) -> dict[str, GPUProfile]:
    """All profiles of a YAML file (default: the shipped ``gpu_profiles.yaml``)."""
    raw: Any = yaml.safe_load((path or PROFILES_FILE).read_text())
    if not isinstance(raw, dict) or not isinstance(raw.get("profiles"), dict):
        raise ValueError(f"{path or PROFILES_FILE}: expected a mapping with a `profiles` key")
    return {
        name: GPUProfile.model_validate({"name": name, **body})
        for name, body in raw["profiles"].items()
    }


def load_profile(name: str, path: Path | None = None) -> GPUProfile:
    """One profile by name; ``ValueError`` lists the known names."""
    profiles = load_profiles(path)
    if name not in profiles:
        raise ValueError(f"unknown GPU profile {name!r}; known: {sorted(profiles)}")
    return profiles[name]
