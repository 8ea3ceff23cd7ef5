"""Scheduling: which worker serves a request (filters -> weighted scorers -> picker).

Public surface: the context records (`types`), `build_profile` / `SchedulingProfile`
(`profile`) and the plugin registry. Policies are pure functions of a `SchedulingContext`;
the KV index computes `prefix_hits` (and `tier_hits`, `shared_tier_hits`) before scoring.
See docs/scheduling.md.
"""

from mainsail.router.scheduling.profile import SchedulingProfile, WeightedScorer, build_profile
from mainsail.router.scheduling.registry import PluginRegistry, default_registry
from mainsail.router.scheduling.tier_hits import shared_tier_hits
from mainsail.router.scheduling.types import (
    ROLES,
    Decision,
    PluginTiming,
    RequestInfo,
    SchedulingContext,
    WorkerSnapshot,
)

__all__ = [
    "ROLES",
    "Decision",
    "PluginRegistry",
    "PluginTiming",
    "RequestInfo",
    "SchedulingContext",
    "SchedulingProfile",
    "WeightedScorer",
    "WorkerSnapshot",
    "build_profile",
    "default_registry",
    "shared_tier_hits",
]
