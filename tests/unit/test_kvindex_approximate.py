"""The approximate index: learned from dispatches, expires by TTL, labelled in metrics."""

from __future__ import annotations

import pytest

from mainsail.router.kvindex import ApproximateIndex, KVIndex

pytestmark = pytest.mark.unit


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_learns_from_dispatches() -> None:
    index = ApproximateIndex(clock=FakeClock())
    index.record_dispatch("a", [1, 2, 3])
    index.record_dispatch("b", [1, 2])
    assert index.longest_prefix([1, 2, 3, 4]) == {"a": 3, "b": 2}


def test_entries_expire_after_the_ttl_unless_dispatched_again() -> None:
    clock = FakeClock()
    index = ApproximateIndex(ttl_seconds=10, clock=clock)
    index.record_dispatch("a", [1, 2])
    clock.now = 6
    index.record_dispatch("a", [1])  # refreshes block 1 only
    clock.now = 11
    assert index.longest_prefix([1, 2]) == {"a": 1}
    clock.now = 17
    assert index.longest_prefix([1, 2]) == {}
    assert index.stats().entries == 0
    assert index.stats().evictions == 2


def test_lookups_do_not_refresh() -> None:
    clock = FakeClock()
    index = ApproximateIndex(ttl_seconds=10, clock=clock)
    index.record_dispatch("a", [1])
    for t in range(1, 11):
        clock.now = t
        index.longest_prefix([1])
    clock.now = 10.5
    assert index.longest_prefix([1]) == {}


def test_cap_drops_the_oldest_dispatch_first() -> None:
    index = ApproximateIndex(max_blocks=2, clock=FakeClock())
    index.record_dispatch("a", [1])
    index.record_dispatch("b", [2])
    index.record_dispatch("c", [3])
    assert index.longest_prefix([1]) == {}
    assert index.longest_prefix([2]) == {"b": 1}
    assert index.stats().entries == 2


def test_removals_and_worker_loss_sharpen_the_guess() -> None:
    index = ApproximateIndex(clock=FakeClock())
    index.record_dispatch("a", [1, 2])
    index.record_dispatch("b", [1, 2])
    index.apply_event("a", "removed", [2])
    index.remove_worker("b")
    assert index.longest_prefix([1, 2]) == {"a": 1}
    index.replace_worker("a", [5])
    assert index.longest_prefix([1]) == {}
    assert index.longest_prefix([5]) == {"a": 1}


def test_is_labelled_approximate() -> None:
    index: KVIndex = ApproximateIndex()
    assert index.mode == "approximate"
    assert index.stats().mode == "approximate"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"ttl_seconds": 0}, "ttl_seconds"), ({"max_blocks": 0}, "max_blocks")],
)
def test_bad_settings_raise(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ApproximateIndex(**kwargs)  # type: ignore[arg-type]
