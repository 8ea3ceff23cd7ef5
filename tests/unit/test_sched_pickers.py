"""Pickers: max-score (random among ties) and weighted-random, with an injected random source."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from mainsail.router.scheduling.pickers.max_score import MaxScorePicker
from mainsail.router.scheduling.pickers.weighted_random import WeightedRandomPicker

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("totals", "allowed"),
    [
        ([0.1, 0.9, 0.5], {1}),
        ([2.0, 2.0, 1.0], {0, 1}),
        ([3.0, 3.0 - 1e-12, 1.0], {0, 1}),  # within tolerance counts as tied
        ([0.0], {0}),
        ([-1.0, -0.5], {1}),
    ],
)
def test_max_score_picks_a_best(totals: list[float], allowed: set[int]) -> None:
    picker = MaxScorePicker(random.Random(0))
    assert {picker.pick(totals) for _ in range(50)} == allowed


def test_max_score_breaks_ties_uniformly() -> None:
    picker = MaxScorePicker(random.Random(1))
    counts = Counter(picker.pick([1.0, 1.0, 1.0, 1.0]) for _ in range(4000))
    assert set(counts) == {0, 1, 2, 3}
    assert all(800 < c < 1200 for c in counts.values())


def test_max_score_is_reproducible_with_a_seed() -> None:
    a = MaxScorePicker(random.Random(7))
    b = MaxScorePicker(random.Random(7))
    totals = [1.0] * 8
    assert [a.pick(totals) for _ in range(20)] == [b.pick(totals) for _ in range(20)]


@pytest.mark.parametrize(
    ("totals", "expected_share"),
    [
        ([1.0, 3.0], [0.25, 0.75]),
        ([0.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3]),  # all zero: uniform
        ([-5.0, 1.0], [0.0, 1.0]),  # negatives count as zero
    ],
)
def test_weighted_random_is_proportional(totals: list[float], expected_share: list[float]) -> None:
    picker = WeightedRandomPicker(random.Random(3))
    n = 6000
    counts = Counter(picker.pick(totals) for _ in range(n))
    for i, share in enumerate(expected_share):
        assert counts[i] / n == pytest.approx(share, abs=0.03)


@pytest.mark.parametrize(
    "picker", [MaxScorePicker(random.Random()), WeightedRandomPicker(random.Random())]
)
def test_pickers_refuse_empty(picker: MaxScorePicker | WeightedRandomPicker) -> None:
    with pytest.raises(ValueError, match="no candidates"):
        picker.pick([])


def test_round_robin_visits_every_candidate_in_turn() -> None:
    import random

    from mainsail.router.scheduling.pickers.round_robin import RoundRobinPicker

    picker = RoundRobinPicker(random.Random(3))
    picks = [picker.pick([0.0, 5.0, 1.0]) for _ in range(9)]
    assert sorted(picks) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert picks[:3] == picks[3:6]
