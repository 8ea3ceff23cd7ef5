"""The pure parts of the goodput benchmarks (`mainsail.sim.goodput`): trace slicing and
scaling, SLO fitting, the goodput search, Jain's index, and that the simulator's and the live
benchmark's policies carry the same names and build on the real router's plugins."""

from __future__ import annotations

import dataclasses
import math
import random
from collections import Counter

import pytest

from mainsail.router.scheduling import RequestInfo, SchedulingContext, build_profile
from mainsail.router.testing import idle_worker
from mainsail.sim.goodput import (
    OURS,
    POLICY_LABELS,
    SIM_POLICIES,
    SLOFit,
    attainment_by,
    class_of,
    family,
    fit_line,
    goodput,
    ideal_hit_rate,
    jain,
    live_profiles,
    rotated,
    scale_outputs,
    tenant_of,
    thin_conversations,
)
from mainsail.sim.policies import POLICY_NAMES
from mainsail.sim.traces import TraceRequest

pytestmark = pytest.mark.unit


def conv_trace(n_families: int, turns: int) -> list[TraceRequest]:
    """Mooncake-shaped: block 0 shared by all, turn k of family f extends turn k-1."""
    out = []
    t = 0.0
    for k in range(turns):
        for f in range(n_families):
            base = (0, 1000 + f, *(10_000 * (f + 1) + j for j in range(k)))
            out.append(TraceRequest(t, 512 * len(base), 100 * (k + 1), base))
            t += 1.0
    return out


def test_thinning_keeps_whole_conversations_in_order() -> None:
    trace = conv_trace(200, 3)
    kept = thin_conversations(trace, 8, limit=10_000)
    families = Counter(family(r, i) for i, r in enumerate(kept))
    assert 0 < len(families) < 200
    assert set(families.values()) == {3}  # every turn of a kept conversation
    assert [r.arrival_s for r in kept] == sorted(r.arrival_s for r in kept)
    assert thin_conversations(trace, 8, limit=5) == kept[:5]
    assert thin_conversations(trace, 1, limit=7) == trace[:7]
    with pytest.raises(ValueError):
        thin_conversations(trace, 0, 5)


def test_thinning_keeps_the_reuse_a_prefix_slice_loses() -> None:
    trace = conv_trace(400, 2)  # a conversation's next turn comes 400 requests later
    head = trace[:60]
    thinned = thin_conversations(trace, 16, limit=60)
    # beyond the shared first block, the first 60 requests reuse nothing; thinned, ~half do
    assert ideal_hit_rate(thinned, 24) > ideal_hit_rate(head, 24) + 0.1


def test_ideal_hit_rate_counts_leading_blocks_per_namespace() -> None:
    a = TraceRequest(0, 1536, 1, (1, 2, 3))
    b = TraceRequest(1, 1536, 1, (1, 2, 4))  # shares 2 leading blocks with a
    c = TraceRequest(2, 1024, 1, (9, 2))  # shares nothing (not leading)
    assert ideal_hit_rate([a, b, c], 24) == pytest.approx(2 / 8)
    assert ideal_hit_rate([a, dataclasses.replace(b, namespace=1)], 24) == 0.0
    assert ideal_hit_rate([a, b], 1) == pytest.approx(1 / 2)
    assert ideal_hit_rate([], 4) == 0.0


def test_scale_outputs_keeps_the_prompt_ratio_within_bounds() -> None:
    trace = [TraceRequest(0, 512, o, (0,)) for o in (1, 100, 512, 5000)]
    assert [r.output_tokens for r in scale_outputs(trace, 64, 32)] == [1, 13, 32, 32]
    assert [r.output_tokens for r in scale_outputs(trace, 512, 10_000)] == [1, 100, 512, 5000]
    with pytest.raises(ValueError):
        scale_outputs(trace, 0, 32)


def test_goodput_is_the_highest_rate_with_every_lower_rate_meeting_the_target() -> None:
    assert goodput({1.0: 0.99, 2.0: 0.95, 3.0: 0.90, 4.0: 0.5}) == 3.0
    assert goodput({1.0: 0.99, 2.0: 0.85, 3.0: 0.95}) == 1.0  # a lucky 3.0 does not count
    assert goodput({2.0: 0.95, 1.0: 0.8}) == 0.0  # order of the mapping does not matter
    assert goodput({}) == 0.0
    assert goodput({1.0: 0.5, 2.0: 0.6}, target=0.5) == 2.0


def test_jain_index() -> None:
    assert jain([0.9, 0.9, 0.9]) == pytest.approx(1.0)
    assert jain([1.0, 0.0, 0.0, 0.0]) == pytest.approx(0.25)
    assert jain([1.0, 0.5]) == pytest.approx(1.5**2 / (2 * 1.25))
    assert math.isnan(jain([])) and math.isnan(jain([0.0, 0.0]))


def test_fit_line_and_slo_targets() -> None:
    a, b = fit_line([(100, 0.05 + 100e-5), (1000, 0.05 + 1000e-5), (500, 0.05 + 500e-5)])
    assert a == pytest.approx(0.05) and b == pytest.approx(1e-5)
    assert fit_line([(1, 5.0), (2, 1.0)])[1] == 0.0  # a negative slope is noise: clamped
    with pytest.raises(ValueError):
        fit_line([(1, 1.0)])
    fit = SLOFit(0.05, 1e-5, 0.002, factor=5, tpot_factor=10)
    assert fit.ttft_target(1000) == pytest.approx(5 * 0.06)
    assert fit.tpot_target() == pytest.approx(0.02)
    assert SLOFit(0.0, 0.0, 0.0, floor_ttft_s=0.2, floor_tpot_s=0.01).ttft_target(5) == 0.2
    with pytest.raises(ValueError):
        SLOFit(0.1, 0.0, 0.0, factor=0)
    with pytest.raises(ValueError):
        SLOFit(0.1, 0.0, 0.0, tpot_factor=-1)


def test_tenants_and_classes_follow_the_conversation() -> None:
    trace = conv_trace(2000, 2)
    by_family: dict[int, set[tuple[str, str]]] = {}
    for i, r in enumerate(trace):
        by_family.setdefault(family(r, i), set()).add((tenant_of(r, i), class_of(r, i)))
    assert all(len(v) == 1 for v in by_family.values())
    tenants = Counter(t for ((t, _),) in (tuple(v) for v in by_family.values()))
    shares = [tenants[f"t{k}"] / 2000 for k in range(4)]
    assert shares == pytest.approx([0.5, 0.25, 0.15, 0.10], abs=0.04)
    interactive = sum(c == "interactive" for ((_, c),) in (tuple(v) for v in by_family.values()))
    assert interactive / 2000 == pytest.approx(0.3, abs=0.04)
    single = TraceRequest(0, 100, 1, (7,))  # one block: its own family, by index
    assert family(single, 3) != family(single, 4)


def test_attainment_by_and_rotation() -> None:
    assert attainment_by(["b", "a", "b"], [True, False, False]) == {"a": 0.0, "b": 0.5}
    with pytest.raises(ValueError):
        attainment_by(["a"], [])
    labels = list(POLICY_LABELS)
    firsts = {rotated(labels, step)[0] for step in range(len(labels))}
    assert firsts == set(labels)
    assert sorted(rotated(labels, 7)) == sorted(labels)
    assert rotated([], 3) == []


def test_simulator_and_live_use_the_same_policy_names() -> None:
    live = live_profiles()
    assert tuple(live) == tuple(SIM_POLICIES) == POLICY_LABELS
    assert live[OURS] == SIM_POLICIES[OURS][1]  # the default profile in both
    for sim_name, _ in SIM_POLICIES.values():
        assert sim_name in POLICY_NAMES
    for profile in live.values():
        build_profile(profile)  # every plugin named exists in the router


def test_live_least_work_picks_least_prefill_ahead_and_in_the_prompt() -> None:
    """The live `least-work` (prefill-time alone) ignores request counts and prices a cached
    prefix: the worker with more requests but less prefill work to do wins."""
    profile = build_profile(live_profiles()["least-work"], random.Random(0))
    busy_cached = dataclasses.replace(idle_worker(), worker_id="a", outstanding=6, running=6)
    idle_cold = dataclasses.replace(idle_worker(), worker_id="b", pending_prefill_tokens=200)
    req = RequestInfo("r", tuple(range(20)), 320, 8)
    ctx = SchedulingContext(req, (busy_cached, idle_cold), {"a": 20})
    assert profile.schedule(ctx).worker_id == "a"
    ctx = SchedulingContext(req, (busy_cached, idle_cold), {})
    assert profile.schedule(ctx).worker_id == "a"  # 320 tokens to prefill vs 520
    rr = build_profile(live_profiles()["round-robin"], random.Random(0))
    picks = [rr.schedule(SchedulingContext(req, (busy_cached, idle_cold))).worker_id for _ in "ab"]
    assert set(picks) == {"a", "b"}
