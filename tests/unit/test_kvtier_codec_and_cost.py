"""Pure parts of the Redis KV tier: the block codec, the fetch-vs-recompute policy, identity.

The engine and Redis are covered in tests/integration/test_engine_redis_tier.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mainsail.spec.kvhash import KVHashConfig
from mainsail.workers.kvtier import (
    BlockCodec,
    FetchCostModel,
    checkpoint_digest,
    decide_fetch,
    kv_namespace,
)

pytestmark = pytest.mark.unit

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@settings(max_examples=40, deadline=None)
@given(
    layers=st.integers(1, 3),
    block=st.integers(1, 8),
    heads=st.integers(1, 3),
    dim=st.integers(1, 8),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**31),
)
def test_codec_round_trip_is_bit_exact(
    layers: int, block: int, heads: int, dim: int, dtype: torch.dtype, seed: int
) -> None:
    codec = BlockCodec(layers, block, heads, dim, dtype, "fp")
    data = torch.randn(codec.shape, generator=torch.Generator().manual_seed(seed)).to(dtype)
    value = codec.encode(data)
    assert len(value) > codec.block_bytes()
    decoded = codec.decode(bytes(value))
    assert decoded.dtype == dtype
    assert torch.equal(decoded.view(torch.uint8), data.view(torch.uint8))


def test_codec_refuses_other_layouts_and_damage() -> None:
    codec = BlockCodec(2, 4, 2, 4, torch.float32, "model-a")
    value = bytes(codec.encode(torch.ones(codec.shape)))
    with pytest.raises(ValueError, match="layout mismatch"):
        BlockCodec(2, 4, 2, 4, torch.float32, "model-b").decode(value)
    with pytest.raises(ValueError, match="layout mismatch"):
        BlockCodec(2, 4, 2, 4, torch.float16, "model-a").decode(value)
    with pytest.raises(ValueError, match="truncated"):
        codec.decode(value[:-1])
    with pytest.raises(ValueError, match="not a Mainsail KV block"):
        codec.decode(b"hello")
    with pytest.raises(ValueError, match="block shape"):
        codec.encode(torch.ones(2, 2))


def test_policies_force_or_follow_the_cost_model() -> None:
    slow_prefill = FetchCostModel(block_bytes=1 << 20, block_size=16, prefill_s_per_token=1e-3)
    fast_prefill = FetchCostModel(block_bytes=1 << 20, block_size=16, prefill_s_per_token=1e-8)
    assert decide_fetch("auto", slow_prefill, 4)
    assert not decide_fetch("auto", fast_prefill, 4)
    assert decide_fetch("always", fast_prefill, 1)
    assert not decide_fetch("never", slow_prefill, 100)
    assert not decide_fetch("always", slow_prefill, 0)


@given(
    rtt=st.floats(1e-5, 1e-2),
    bandwidth=st.floats(1e6, 1e11),
    prefill=st.floats(1e-8, 1e-2),
    n=st.integers(1, 10_000),
)
def test_fetch_decision_is_monotone_in_blocks(
    rtt: float, bandwidth: float, prefill: float, n: int
) -> None:
    """More blocks amortise the round trip: if n blocks are worth fetching, so are n + 1.

    That is what lets the loader skip the probe when all remaining blocks would not pay.
    """
    model = FetchCostModel(
        block_bytes=2 << 20,
        block_size=16,
        rtt_s=rtt,
        bandwidth_bps=bandwidth,
        prefill_s_per_token=prefill,
    )
    if model.should_fetch(n):
        assert model.should_fetch(n + 1)


def test_observations_move_the_estimates() -> None:
    model = FetchCostModel(block_bytes=1 << 20, block_size=16)
    for _ in range(50):
        model = model.observe_rtt(1e-4).observe_prefill(1000, 0.5).observe_fetch(4, 0.005)
    assert model.rtt_s == pytest.approx(1e-4, rel=0.01)
    assert model.prefill_s_per_token == pytest.approx(5e-4, rel=0.01)
    assert 0.8e9 < model.bandwidth_bps < 1.0e9
    assert model.observe_rtt(0) == model and model.observe_fetch(0, 1.0) == model


def test_namespace_separates_models_hash_parameters_and_dtypes(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for d, fill in ((a, b"\x01"), (b, b"\x02")):
        d.mkdir()
        (d / "config.json").write_text('{"hidden_size": 64}')
        (d / "model.safetensors").write_bytes(fill * 300_000)
    assert checkpoint_digest(a) != checkpoint_digest(b)
    assert checkpoint_digest(a) == checkpoint_digest(a)
    kv = KVHashConfig(block_size=16, hash_seed=0)
    names = {
        kv_namespace(kv, a, torch.float32),
        kv_namespace(kv, b, torch.float32),
        kv_namespace(kv, a, torch.bfloat16),
        kv_namespace(KVHashConfig(block_size=16, hash_seed=1), a, torch.float32),
    }
    assert len(names) == 4
