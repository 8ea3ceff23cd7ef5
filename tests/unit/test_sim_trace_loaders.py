"""Trace loaders, scaling, and prompt synthesis that is exact under the real chained hash."""

from __future__ import annotations

import itertools

import pytest

from mainsail.sim.prompts import PromptHasher, prompt_tokens, trace_block_tokens
from mainsail.sim.traces import TraceRequest, load_trace, scale_trace
from mainsail.spec.kvhash import chain_hashes

pytestmark = pytest.mark.unit


def test_mooncake_slice_has_documented_fields() -> None:
    rows = load_trace("mooncake", limit=50)
    assert len(rows) == 50
    first = rows[0]
    assert first.arrival_s == 0.0
    assert (first.input_tokens, first.output_tokens) == (6758, 500)
    assert first.block_ids[:3] == (0, 1, 2)
    assert all(len(r.block_ids) == -(-r.input_tokens // 512) for r in rows)
    assert all(a.arrival_s <= b.arrival_s for a, b in itertools.pairwise(rows))


@pytest.mark.parametrize("name", ["azure-code", "azure-conv"])
def test_azure_slices_start_at_zero_with_unique_blocks(name: str) -> None:
    rows = load_trace(name, limit=40)
    assert rows[0].arrival_s == 0.0
    assert rows[-1].arrival_s > 0
    ids = [b for r in rows for b in r.block_ids]
    assert len(ids) == len(set(ids))
    assert all(r.input_tokens >= 1 and r.output_tokens >= 1 for r in rows)


def test_unknown_trace_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="mooncake"):
        load_trace("sharegpt")


def _trace() -> list[TraceRequest]:
    return [TraceRequest(float(t), 600, 10, (0, 100 + t)) for t in range(10)]


def test_rate_scale_superposes_copies_in_their_own_namespace() -> None:
    base = _trace()
    doubled = scale_trace(base, rate_scale=2.0)
    assert len(doubled) == 2 * len(base)
    assert max(r.arrival_s for r in doubled) == max(r.arrival_s for r in base)
    assert {r.namespace for r in doubled} == {0, 1}
    hasher = PromptHasher(64)
    h0, h1 = (hasher.block_hashes(r.block_ids, 600, r.namespace) for r in doubled[:2])
    assert h0 != h1  # the same ids in two copies never share KV
    partial = scale_trace(base * 50, rate_scale=1.5, seed=3)
    assert 600 < len(partial) < 900


def test_time_scale_jitter_and_duration() -> None:
    base = _trace()
    fast = scale_trace(base, time_scale=2.0)
    assert [r.arrival_s for r in fast] == [r.arrival_s / 2 for r in base]
    cut = scale_trace(base, duration_s=5.0)
    assert len(cut) == 5
    spaced = [TraceRequest(10.0 * i, 600, 10, (i,)) for i in range(10)]
    a = scale_trace(spaced, jitter_s=3.0, seed=7)
    assert a == scale_trace(spaced, jitter_s=3.0, seed=7)
    offsets = [x.arrival_s - y.arrival_s for x, y in zip(a, spaced, strict=True)]
    assert all(0 <= d < 3.0 for d in offsets)
    assert len(set(offsets)) > 1
    with pytest.raises(ValueError):
        scale_trace(base, rate_scale=0)


@pytest.mark.parametrize("block_size", [16, 64, 512])
def test_synthesised_prompts_hash_exactly_like_chain_hashes(block_size: int) -> None:
    rows = load_trace("mooncake", limit=6)
    hasher = PromptHasher(block_size, hash_seed=5)
    for r in rows:
        n = min(r.input_tokens, 1500)
        ids = r.block_ids[: -(-n // 512)]
        want = chain_hashes(prompt_tokens(ids, n), block_size, seed=5)
        assert hasher.block_hashes(ids, n) == want


def test_equal_trace_prefixes_give_equal_leading_hashes_only() -> None:
    hasher = PromptHasher(64)
    a = hasher.block_hashes((0, 1, 2), 1536)
    b = hasher.block_hashes((0, 1, 9), 1536)
    assert a[:16] == b[:16]
    assert a[16] != b[16]
    assert trace_block_tokens(1) != trace_block_tokens(2)


def test_block_size_must_divide_512() -> None:
    with pytest.raises(ValueError, match="divide"):
        PromptHasher(48)
