"""Plugins by name, so a `RoutingProfile` in a `ModelDeployment` can name them.

Why an explicit `PluginRegistry` object rather than a module-level dict: tests and extensions
register plugins on their own copy (`default_registry()` returns a fresh one), and no import
has a side effect on shared state. Built-in plugins are pure Python and cheap to import.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from mainsail.router.scheduling.filters.adapter import AdapterFilter
from mainsail.router.scheduling.filters.capacity import CapacityFilter
from mainsail.router.scheduling.filters.healthy import HealthyFilter
from mainsail.router.scheduling.filters.role import RoleFilter
from mainsail.router.scheduling.pickers.max_score import MaxScorePicker
from mainsail.router.scheduling.pickers.round_robin import RoundRobinPicker
from mainsail.router.scheduling.pickers.weighted_random import WeightedRandomPicker
from mainsail.router.scheduling.plugin import Filter, PickerFactory, Scorer
from mainsail.router.scheduling.scorers.adapter_affinity import AdapterAffinityScorer
from mainsail.router.scheduling.scorers.kv_prefix import KVPrefixScorer
from mainsail.router.scheduling.scorers.kv_utilization import KVUtilizationScorer
from mainsail.router.scheduling.scorers.prefill_backlog import PrefillBacklogScorer
from mainsail.router.scheduling.scorers.prefill_time import PrefillTimeScorer
from mainsail.router.scheduling.scorers.queue_depth import QueueDepthScorer
from mainsail.router.scheduling.scorers.running_requests import RunningRequestsScorer
from mainsail.router.scheduling.scorers.ttft import TTFTScorer


@dataclass
class PluginRegistry:
    """Factories of filters, scorers and pickers, keyed by the names profiles use."""

    filters: dict[str, Callable[[], Filter]] = field(default_factory=dict)
    scorers: dict[str, Callable[[], Scorer]] = field(default_factory=dict)
    pickers: dict[str, PickerFactory] = field(default_factory=dict)

    def register_filter(self, name: str, factory: Callable[[], Filter]) -> None:
        """Adds or replaces a filter factory."""
        self.filters[name] = factory

    def register_scorer(self, name: str, factory: Callable[[], Scorer]) -> None:
        """Adds or replaces a scorer factory."""
        self.scorers[name] = factory

    def register_picker(self, name: str, factory: PickerFactory) -> None:
        """Adds or replaces a picker factory (called with the profile's random source)."""
        self.pickers[name] = factory


def default_registry() -> PluginRegistry:
    """A fresh registry holding every built-in plugin."""
    registry = PluginRegistry()
    for f in (HealthyFilter, RoleFilter, CapacityFilter, AdapterFilter):
        registry.register_filter(f.name, f)
    for s in (
        KVPrefixScorer,
        QueueDepthScorer,
        RunningRequestsScorer,
        KVUtilizationScorer,
        AdapterAffinityScorer,
        PrefillBacklogScorer,
        PrefillTimeScorer,
        TTFTScorer,
    ):
        registry.register_scorer(s.name, s)
    registry.register_picker(MaxScorePicker.name, MaxScorePicker)
    registry.register_picker(WeightedRandomPicker.name, WeightedRandomPicker)
    registry.register_picker(RoundRobinPicker.name, RoundRobinPicker)
    return registry
