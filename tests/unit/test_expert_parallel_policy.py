"""The expert-parallel degree policy: a table of decisions, then Hypothesis invariants (valid
degrees only, bounds, cooldown and scale-down delay respected, more load never asks for
fewer ranks, and over any load sequence no two changes closer than the cooldown)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mainsail.operator.expert_parallel_policy import (
    ExpertBounds,
    ExpertDecision,
    ExpertSignals,
    ExpertTargets,
    busiest_share,
    decide,
    effective_ranks,
    imbalance_of,
    valid_degrees,
)

pytestmark = pytest.mark.unit

EVEN8 = (10.0,) * 8
WIDE = ExpertBounds(1, 8)
TARGETS = ExpertTargets(requests_per_rank=4, cooldown_seconds=30, scale_down_delay_seconds=60)


def run(
    current: int,
    running: int,
    waiting: int = 0,
    *,
    load: tuple[float, ...] = EVEN8,
    bounds: ExpertBounds = WIDE,
    workers: int = 1,
    now: float = 1000.0,
    last_change: float | None = None,
    lower_since: float | None = None,
    switching: bool = False,
) -> ExpertDecision:
    signals = ExpertSignals(current, workers, running, waiting, load, switching)
    return decide(
        bounds, TARGETS, signals, now=now, last_change=last_change, lower_since=lower_since
    )


def test_valid_degrees_divide_the_experts_and_respect_tp() -> None:
    assert valid_degrees(ExpertBounds(1, 8), 8) == [1, 2, 4, 8]
    assert valid_degrees(ExpertBounds(1, 8), 6) == [1, 2, 3, 6]
    assert valid_degrees(ExpertBounds(2, 8, tensor_parallel=2), 8) == [2, 4, 8]
    assert valid_degrees(ExpertBounds(3, 3), 8) == []
    assert valid_degrees(ExpertBounds(1, 64), 4) == [1, 2, 4]  # never more ranks than experts


def test_effective_ranks_and_imbalance() -> None:
    assert effective_ranks(EVEN8, 4) == pytest.approx(4.0)
    assert effective_ranks((0.0,) * 8, 4) == 4.0  # unmeasured: assume even
    hot = (70.0, 10.0, 10.0, 10.0)  # one hot expert caps what more ranks can do
    assert busiest_share(hot, 2) == 80.0  # two experts per rank: 70 + 10
    assert effective_ranks(hot, 4) == pytest.approx(100 / 70)
    assert imbalance_of(hot, 2) == pytest.approx(1.6)
    assert imbalance_of(EVEN8, 4) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("kwargs", "target", "says"),
    [
        ({"current": 1, "running": 2}, 1, "2.0 requests per worker"),
        ({"current": 1, "running": 6, "waiting": 6}, 4, "needs 3.00 ranks"),  # 12/4 = 3 -> 4
        ({"current": 1, "running": 40}, 8, "needs 10.00"),  # beyond every degree: the top
        ({"current": 2, "running": 8, "workers": 2}, 2, "4.0 requests per worker"),  # 1 rank ok
        # one hot expert: 2 ranks do only 100/80 = 1.25 ranks of work, so 1.5 needs 4
        ({"current": 1, "running": 6, "load": (70.0, 10.0, 10.0, 10.0)}, 4, "imbalance 1.00"),
        ({"current": 2, "running": 1, "load": (70.0, 10.0, 10.0, 10.0)}, 2, "imbalance 1.60"),
        ({"current": 1, "running": 30, "bounds": ExpertBounds(1, 2)}, 2, ""),  # the max
        ({"current": 4, "running": 0, "bounds": ExpertBounds(1, 2)}, 2, "outside"),  # spec moved
        ({"current": 0, "running": 9}, 0, "no worker reports"),
        ({"current": 1, "running": 9, "load": ()}, 1, "no degree"),  # no MoE figures
        ({"current": 1, "running": 9, "last_change": 990.0}, 1, "cooldown"),
        ({"current": 1, "running": 9, "switching": True}, 1, "still switching"),
    ],
)
def test_decisions(kwargs: dict[str, object], target: int, says: str) -> None:
    decision = run(**kwargs)  # type: ignore[arg-type]
    assert decision.target == target, decision
    assert says in decision.reason


def test_scale_down_waits_for_the_delay_and_needs_headroom() -> None:
    first = run(4, 0, now=1000.0)  # idle at 4: wants 1, but only after 60 s of wanting it
    assert (first.target, first.recommended, first.lower_since) == (4, 1, 1000.0)
    assert "scale-down delay" in first.reason
    later = run(4, 0, now=1059.0, lower_since=first.lower_since)
    assert later.target == 4
    done = run(4, 0, now=1060.0, lower_since=first.lower_since)
    assert (done.target, done.lower_since) == (1, None)
    # 4 requests at ep 2: 1 rank would carry exactly its target (4/4), but a lower degree
    # needs 25% headroom, so 2 stays; 3 requests fit 1 rank at 75%.
    assert run(2, 4, lower_since=0.0).recommended == 2
    assert run(2, 3, lower_since=0.0).target == 1
    # load back up: the pending scale-down is forgotten
    assert run(4, 16, lower_since=900.0).lower_since is None


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[ExpertBounds, ExpertSignals, float, float | None]:
    experts = draw(st.sampled_from([1, 2, 4, 6, 8, 16]))
    tp = draw(st.sampled_from([1, 1, 2]))
    lo = draw(st.integers(1, 8))
    hi = draw(st.integers(lo, 16))
    bounds = ExpertBounds(lo, hi, tp)
    load = tuple(draw(st.lists(st.floats(0, 1e6), min_size=experts, max_size=experts)))
    signals = ExpertSignals(
        current=draw(st.integers(0, 16)),
        workers=draw(st.integers(0, 8)),
        running=draw(st.integers(0, 200)),
        waiting=draw(st.integers(0, 200)),
        expert_load=load,
        switching=draw(st.booleans()),
    )
    last = draw(st.none() | st.floats(0, 2000))
    return bounds, signals, draw(st.floats(0, 2000)), last


@given(scenarios(), st.none() | st.floats(0, 2000))
def test_invariants(
    scenario: tuple[ExpertBounds, ExpertSignals, float, float | None], lower: float | None
) -> None:
    bounds, signals, now, last = scenario
    d = decide(bounds, TARGETS, signals, now=now, last_change=last, lower_since=lower)
    degrees = valid_degrees(bounds, len(signals.expert_load))
    current = signals.current
    # only a valid degree, or no change
    assert d.target == current or d.target in degrees
    if degrees and current >= 1:
        assert d.recommended in degrees
    if current in degrees and d.target != current:
        # never while switching or cooling down; never down before the delay
        assert not signals.switching
        assert last is None or now - last >= TARGETS.cooldown_seconds
        if d.target < current:
            assert lower is not None and now - lower >= TARGETS.scale_down_delay_seconds
    # more load never asks for fewer ranks
    more = ExpertSignals(
        current, signals.workers, signals.running, signals.waiting + 7,
        signals.expert_load, signals.switching,
    )  # fmt: skip
    heavier = decide(bounds, TARGETS, more, now=now, last_change=last, lower_since=lower)
    assert heavier.recommended >= d.recommended
    assert heavier.target >= d.target or current not in degrees


@settings(max_examples=60)
@given(
    st.lists(st.tuples(st.integers(0, 60), st.integers(0, 60)), min_size=1, max_size=120),
    st.sampled_from([4, 8]),
)
def test_no_flapping_over_a_load_sequence(loads: list[tuple[int, int]], experts: int) -> None:
    """A pass every 5 s over any load sequence: changes are at least a cooldown apart, a
    scale-down follows a whole delay of wanting it, and the degree always stays valid."""
    bounds = ExpertBounds(1, 8)
    degrees = valid_degrees(bounds, experts)
    current, last, lower = 1, None, None
    changes: list[tuple[float, int, int]] = []
    for i, (running, waiting) in enumerate(loads):
        now = 5.0 * i
        signals = ExpertSignals(current, 1, running, waiting, (5.0,) * experts)
        d = decide(bounds, TARGETS, signals, now=now, last_change=last, lower_since=lower)
        if d.target != current:
            if d.target < current:
                assert lower is not None and now - lower >= TARGETS.scale_down_delay_seconds
            changes.append((now, current, d.target))
            current, last = d.target, now
        lower = d.lower_since
        assert current in degrees
    for (t1, _, _), (t2, _, _) in itertools.pairwise(changes):
        assert t2 - t1 >= TARGETS.cooldown_seconds
