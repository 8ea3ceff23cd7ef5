"""Cost model of one engine step, per GPU type (the formula lives in `mainsail.spec.step_cost`,
shared with the router's admission; this module adds the per-GPU profiles).

Why linear, and how decode attention reads the cache (``sum`` vs ``padded``): see the formula
in `mainsail.spec.step_cost`. Calibration batches have equal contexts, so both attention modes
fit the same ``kv_read_s``; a replay's mixed lengths tell them apart.

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
from typing import Any

import yaml
from pydantic import Field

from mainsail.spec.step_cost import StepCost, attn_pairs

PROFILES_FILE = Path(__file__).with_name("gpu_profiles.yaml")


class GPUProfile(StepCost):
    """One GPU type (and model) as the simulator sees it: the shared step cost model
    (`mainsail.spec.step_cost`, which the router's admission reads too) plus the KV cache
    size and where the figures come from. Times in seconds."""

    name: str = Field(..., min_length=1)
    description: str = ""
    sources: list[str] = Field(default_factory=list, description="Where the figures come from.")
    kv_capacity_tokens: int = Field(..., ge=1, description="KV cache size in tokens.")
    kv_bytes_per_token: int = Field(
        131072, ge=1, description="KV bytes per token (what a block costs to move to a tier)."
    )

    def kv_capacity_blocks(self, block_size: int) -> int:
        """KV cache size in whole blocks of ``block_size`` tokens."""
        return max(1, self.kv_capacity_tokens // block_size)

    def step_cost(self) -> StepCost:
        """The profile's cost model alone (what `spec.router.admission.stepCost` takes)."""
        return StepCost.model_validate(self.model_dump(include=set(StepCost.model_fields)))


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


__all__ = ["PROFILES_FILE", "GPUProfile", "StepCost", "attn_pairs", "load_profile", "load_profiles"]
