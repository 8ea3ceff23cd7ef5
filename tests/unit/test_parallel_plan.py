"""The sharding rules: what each rank holds, what is refused, how experts are balanced."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mainsail.workers.parallel.plan import (
    ModelShape,
    ShardingError,
    check_expert_parallel,
    check_tensor_parallel,
    even_split,
    kv_owner_ranks,
    place_experts,
    rank_loads,
    tensor_layout,
)

TINY = ModelShape(num_heads=4, num_kv_heads=2, intermediate_size=128, vocab_size=512)


@given(st.integers(1, 300), st.integers(1, 16))
def test_even_split_covers_everything_once(total: int, parts: int) -> None:
    ranges = [even_split(total, parts, i) for i in range(parts)]
    assert [x for r in ranges for x in r] == list(range(total))
    assert max(map(len, ranges)) - min(map(len, ranges)) <= 1


@pytest.mark.parametrize(
    ("heads", "kv", "tp"), [(4, 2, 2), (4, 1, 2), (4, 2, 4), (8, 8, 4), (6, 3, 3), (32, 8, 16)]
)
def test_every_query_head_sees_its_kv_head(heads: int, kv: int, tp: int) -> None:
    shape = ModelShape(heads, kv, 100, 1000)
    group = heads // kv
    seen: set[int] = set()
    for rank in range(tp):
        layout = tensor_layout(shape, tp, rank)
        seen |= set(layout.heads)
        assert {h // group for h in layout.heads} <= set(layout.kv_heads)
    assert seen == set(range(heads))
    owners = kv_owner_ranks(shape, tp)
    assert len(owners) == kv and owners == sorted(owners)


def test_replicated_kv_heads_live_on_consecutive_ranks() -> None:
    layouts = [tensor_layout(TINY, 4, r) for r in range(4)]
    assert [tuple(x.kv_heads) for x in layouts] == [(0,), (0,), (1,), (1,)]
    assert kv_owner_ranks(TINY, 4) == [0, 2]


def test_vocabulary_slices_are_padded_to_equal_size() -> None:
    shape = ModelShape(6, 3, 128, 512)
    layouts = [tensor_layout(shape, 3, r) for r in range(3)]
    assert {x.vocab_per_rank for x in layouts} == {171}
    assert [len(x.vocab) for x in layouts] == [171, 171, 170]
    assert [len(x.intermediate) for x in layouts] == [43, 43, 42]


@pytest.mark.parametrize(
    ("shape", "tp", "words"),
    [
        (TINY, 3, "does not divide num_attention_heads 4"),
        (ModelShape(8, 4, 64, 64), 8, None),
        (ModelShape(12, 4, 64, 64), 6, "not a multiple of num_key_value_heads 4"),
        (ModelShape(8, 6, 64, 64), 4, "does not divide num_key_value_heads 6"),
        (TINY, 0, "must be >= 1"),
    ],
)
def test_tensor_parallel_refusals_name_the_numbers(
    shape: ModelShape, tp: int, words: str | None
) -> None:
    if words is None:
        check_tensor_parallel(shape, tp)
        return
    with pytest.raises(ShardingError, match=words):
        check_tensor_parallel(shape, tp)


def test_expert_parallel_refusals() -> None:
    with pytest.raises(ShardingError, match="needs a mixture-of-experts model"):
        check_expert_parallel(TINY, 2)
    with pytest.raises(ShardingError, match="exceeds num_local_experts 4"):
        check_expert_parallel(ModelShape(4, 2, 64, 64, num_experts=4), 5)
    check_expert_parallel(ModelShape(4, 2, 64, 64, num_experts=4), 4)


def test_placement_without_load_is_contiguous() -> None:
    assert place_experts(4, 2) == ((0, 1), (2, 3))
    assert place_experts(5, 3) == ((0, 1), (2, 3), (4,))


def test_placement_balances_measured_load() -> None:
    load = [100.0, 90.0, 10.0, 5.0]
    placement = place_experts(4, 2, load)
    assert sorted(e for p in placement for e in p) == [0, 1, 2, 3]
    assert placement == ((0, 3), (1, 2))
    assert max(rank_loads(placement, load)) == 105.0


@given(
    st.integers(1, 12).flatmap(
        lambda n: st.tuples(
            st.just(n),
            st.integers(1, n),
            st.lists(st.floats(0, 1000), min_size=n, max_size=n),
        )
    )
)
def test_placement_is_a_partition_within_the_cap(case: tuple[int, int, list[float]]) -> None:
    experts, ep, load = case
    placement = place_experts(experts, ep, load)
    assert len(placement) == ep
    assert sorted(e for p in placement for e in p) == list(range(experts))
    assert max(map(len, placement)) <= -(-experts // ep)
    assert min(map(len, placement)) >= 1
