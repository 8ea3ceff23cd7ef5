"""Recent expert load (`parallel.recent_load`): placement and the autoscaler follow what the
model is asked now. Table cases for the formula, a placement that moves when the hot experts
change (where the cumulative counts would not), and Hypothesis properties over any sequence
of counter reads."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mainsail.workers.parallel.plan import place_experts
from mainsail.workers.parallel.recent_load import HALF_LIFE_S, RecentLoad, observe

pytestmark = pytest.mark.unit


def test_first_read_is_taken_whole_then_halves_every_half_life() -> None:
    first = observe(RecentLoad(), [8.0, 4.0], now=100.0)
    assert first.recent == (8.0, 4.0) and first.at == 100.0
    idle = observe(first, [8.0, 4.0], now=100.0 + HALF_LIFE_S)
    assert idle.recent == pytest.approx((4.0, 2.0))
    busy = observe(idle, [18.0, 4.0], now=100.0 + 3 * HALF_LIFE_S)
    assert busy.recent == pytest.approx((1.0 + 10.0, 0.5))


def test_a_counter_that_went_down_restarts_and_a_new_shape_starts_over() -> None:
    state = observe(RecentLoad(), [100.0, 100.0], now=0.0)
    reset = observe(state, [3.0, 110.0], now=0.0)  # a fresh rank 0 counts from zero
    assert reset.recent == (103.0, 110.0)
    other = observe(reset, [1.0, 2.0, 3.0], now=5.0)
    assert other.recent == (1.0, 2.0, 3.0)


def test_bad_half_life_is_refused() -> None:
    with pytest.raises(ValueError, match="half_life"):
        observe(RecentLoad(), [1.0], now=0.0, half_life=0)


def test_placement_follows_the_experts_hot_now() -> None:
    """An hour of load on expert 0 (and a little on 1), then ten minutes on experts 2 and 3.
    Placed on two ranks by the cumulative counts, experts 2 and 3 (hot now) share a rank and
    one rank carries all of today's load; by recent load each rank carries one of them."""
    state = observe(RecentLoad(), [0.0] * 4, now=0.0)
    counts = [0.0] * 4
    for minute in range(1, 71):
        per_minute = {0: 600.0, 1: 10.0} if minute <= 60 else {2: 600.0, 3: 600.0}
        for expert, tokens in per_minute.items():
            counts[expert] += tokens
        state = observe(state, counts, now=60.0 * minute)
    cumulative = place_experts(4, 2, counts)
    recent = place_experts(4, 2, state.recent)
    assert any({2, 3} <= set(rank) for rank in cumulative), cumulative
    assert not any({2, 3} <= set(rank) for rank in recent), recent


reads = st.lists(
    st.tuples(
        st.floats(0, 600, allow_nan=False),  # seconds since the previous read
        st.lists(st.integers(0, 1000), min_size=3, max_size=3),  # tokens routed meanwhile
    ),
    min_size=1,
    max_size=30,
)


@given(reads)
def test_recent_is_never_negative_nor_above_the_counts(
    steps: list[tuple[float, list[int]]],
) -> None:
    state, now, counts = RecentLoad(), 0.0, [0.0] * 3
    for gap, added in steps:
        now += gap
        counts = [c + a for c, a in zip(counts, added, strict=True)]
        state = observe(state, counts, now)
        for r, c in zip(state.recent, counts, strict=True):
            assert -1e-9 <= r <= c + 1e-6


@given(st.lists(st.floats(0, 10_000, allow_nan=False), min_size=1, max_size=5), st.floats(1, 1e4))
def test_without_new_tokens_recent_only_decays(start: list[float], gap: float) -> None:
    state = observe(RecentLoad(), start, now=0.0)
    later = observe(state, start, now=gap)
    assert all(b <= a for a, b in zip(state.recent, later.recent, strict=True))
