"""The profile: assembly from a RoutingProfile, filter -> score -> pick flow, per-plugin timing."""

from __future__ import annotations

import dataclasses
import itertools
import random
from typing import Any

import pytest

from mainsail.router.scheduling import (
    RequestInfo,
    SchedulingContext,
    WorkerSnapshot,
    build_profile,
    default_registry,
)
from mainsail.router.testing import idle_worker
from mainsail.spec.routing_profile import RoutingProfile, ScorerWeight

pytestmark = pytest.mark.unit

BASE = idle_worker(kv_blocks_used=10)
REQUEST = RequestInfo("r", (11, 12, 13, 14), 64, 16)


def worker(worker_id: str, **changes: Any) -> WorkerSnapshot:
    return dataclasses.replace(BASE, worker_id=worker_id, **changes)


def ticking_clock() -> Any:
    counter = itertools.count()
    return lambda: float(next(counter))


def test_default_profile_assembles_in_order() -> None:
    profile = build_profile(RoutingProfile(), random.Random(0))
    assert [f.name for f in profile.filters] == ["healthy", "role", "capacity"]
    assert [(s.scorer.name, s.weight) for s in profile.scorers] == [
        ("prefill-time", 2.0),
        ("queue-depth", 1.0),
        ("running-requests", 1.0),
        ("kv-utilization", 0.5),
    ]
    assert profile.picker.name == "max-score"
    assert "prefix_hits" in profile.reads and "outstanding" in profile.reads


@pytest.mark.parametrize(
    ("profile", "named"),
    [
        (RoutingProfile(filters=["healthy", "nope"]), "filter 'nope'"),
        (RoutingProfile(scorers=[ScorerWeight(name="magic", weight=1.0)]), "scorer 'magic'"),
    ],
)
def test_unknown_plugins_are_named(profile: RoutingProfile, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        build_profile(profile)


def test_unknown_picker_is_named_with_a_custom_registry() -> None:
    registry = default_registry()
    del registry.pickers["weighted-random"]
    with pytest.raises(ValueError, match="picker 'weighted-random'"):
        build_profile(RoutingProfile(picker="weighted-random"), registry=registry)


def test_prefers_cached_prefix_when_loads_are_equal() -> None:
    profile = build_profile(RoutingProfile(), random.Random(0))
    ctx = SchedulingContext(REQUEST, (worker("a"), worker("b"), worker("c")), {"b": 4, "c": 1})
    decision = profile.schedule(ctx)
    assert decision.worker_id == "b"
    assert decision.components["prefill-time"] == 1.0
    # Prompt of 64 tokens, blocks of 16 (no cost model reported: 0.2 ms per token). b has all 4
    # blocks (3 reusable: the last token is always computed) -> 16 tokens to prefill, c 48,
    # a 64. Relative headroom with slack 512 tokens: c = 1 - 32/(16 + 512), a = 1 - 48/528.
    # prefill-time 2, queue-depth 1, running-requests 1, kv-utilization 0.5 x 0.9
    assert decision.scores["b"] == pytest.approx(2.0 + 1.0 + 1.0 + 0.5 * 0.9)
    assert decision.scores["c"] == pytest.approx(2.0 * (1 - 32 / 528) + 1.0 + 1.0 + 0.5 * 0.9)
    assert decision.scores["a"] == pytest.approx(2.0 * (1 - 48 / 528) + 1.0 + 1.0 + 0.5 * 0.9)


def test_filters_run_before_scoring() -> None:
    profile = build_profile(RoutingProfile(), random.Random(0))
    ctx = SchedulingContext(
        REQUEST, (worker("a", healthy=False), worker("b", role="encode"), worker("c")), {"a": 4}
    )
    decision = profile.schedule(ctx)
    assert decision.worker_id == "c"
    assert set(decision.scores) == {"c"}


@pytest.mark.parametrize(
    ("workers", "reason"),
    [
        ((), "no workers registered"),
        ((worker("a", healthy=False),), "filter 'healthy' removed all 1 candidates"),
        ((worker("a", role="decode"), worker("b", role="encode")), "filter 'role' removed all 2"),
        ((worker("a", max_model_len=32),), "filter 'capacity' removed all 1"),
    ],
)
def test_no_worker_says_why(workers: tuple[WorkerSnapshot, ...], reason: str) -> None:
    decision = build_profile(RoutingProfile()).schedule(SchedulingContext(REQUEST, workers))
    assert decision.worker_id is None
    assert decision.reason is not None and decision.reason.startswith(reason)


def test_every_plugin_is_timed_with_the_injected_clock() -> None:
    profile = build_profile(RoutingProfile(), random.Random(0), clock=ticking_clock())
    decision = profile.schedule(SchedulingContext(REQUEST, (worker("a"), worker("b"))))
    assert [(t.kind, t.name) for t in decision.timings] == [
        ("filter", "healthy"),
        ("filter", "role"),
        ("filter", "capacity"),
        ("scorer", "prefill-time"),
        ("scorer", "queue-depth"),
        ("scorer", "running-requests"),
        ("scorer", "kv-utilization"),
        ("picker", "max-score"),
    ]
    assert all(t.seconds == 1.0 for t in decision.timings)


def test_adapter_profile_places_on_the_holder() -> None:
    profile = build_profile(
        RoutingProfile(
            filters=["healthy", "adapter"],
            scorers=[
                ScorerWeight(name="adapter-affinity", weight=1.0),
                ScorerWeight(name="running-requests", weight=1.0),
            ],
            picker="weighted-random",
        ),
        random.Random(0),
    )
    request = dataclasses.replace(REQUEST, adapter="x")
    ws = (worker("a"), worker("b", adapters=frozenset({"x"})))
    assert {profile.schedule(SchedulingContext(request, ws)).worker_id for _ in range(20)} == {"b"}


def test_negative_weight_is_refused() -> None:
    profile = build_profile(RoutingProfile())
    with pytest.raises(ValueError, match="weight"):
        type(profile)(
            profile.filters,
            [dataclasses.replace(profile.scorers[0], weight=-1.0)],
            profile.picker,
        )
