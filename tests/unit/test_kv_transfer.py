"""KV blocks and request state on the wire between workers (`mainsail.workers.kv_transfer`):
what a target takes, and what it refuses before anything reaches its cache."""

from __future__ import annotations

import pytest
import torch

from mainsail.workers import kv_transfer
from mainsail.workers.engine import EngineRequest, MigratedState, SamplingParams
from mainsail.workers.engine.detokenizer import DetokenizerState
from mainsail.workers.kv_transfer import (
    KVRefused,
    stage_blocks,
    stage_messages,
    state_from_proto,
    state_to_proto,
)
from mainsail.workers.kvtier import BlockCodec

pytestmark = pytest.mark.unit


def _codec(fingerprint: str = "kvhash/0123456789abcdef/float32") -> BlockCodec:
    return BlockCodec(
        layers=2, block_size=4, kv_heads=2, head_dim=8, dtype=torch.float32, fingerprint=fingerprint
    )


def _blocks(n: int) -> torch.Tensor:
    return torch.randn(n, *_codec().shape, generator=torch.Generator().manual_seed(n))


def test_blocks_survive_the_wire_split_over_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    codec = _codec()
    row = codec.block_bytes() + 8
    monkeypatch.setattr(kv_transfer, "MAX_MESSAGE_BYTES", 3 * row)
    blocks = _blocks(7)
    messages = list(stage_messages(codec, "req-a", 5, blocks))
    assert [(m.first_block, m.num_blocks) for m in messages] == [(5, 3), (8, 3), (11, 1)]
    got = [stage_blocks(codec, m) for m in messages]
    assert torch.equal(torch.cat([g for g in got if g is not None]), blocks)
    (empty,) = stage_messages(codec, "req-a", 12, None)
    assert stage_blocks(codec, empty) is None


def test_blocks_of_another_model_are_refused() -> None:
    (message,) = stage_messages(_codec("kvhash/fedcba9876543210/float32"), "req-a", 0, _blocks(2))
    with pytest.raises(KVRefused, match="another model"):
        stage_blocks(_codec(), message)


def test_a_corrupt_or_truncated_block_is_refused() -> None:
    codec = _codec()
    (message,) = stage_messages(codec, "req-a", 0, _blocks(3))
    damaged = bytearray(message.blocks)
    damaged[codec.block_bytes() + 8 + 5] ^= 1  # one bit of block 1's data
    message.blocks = bytes(damaged)
    with pytest.raises(KVRefused, match="block 1 is corrupt"):
        stage_blocks(codec, message)
    message.blocks = message.blocks[:-1]
    with pytest.raises(KVRefused, match="bytes for 3 blocks"):
        stage_blocks(codec, message)


def test_the_request_state_round_trips_and_bad_state_is_refused() -> None:
    """(Sampling values as the wire carries them, float32: the source got them that way.)"""
    sampling = SamplingParams(temperature=0.75, top_p=0.5, seed=11, max_tokens=40, stop=("x",))
    state = MigratedState(
        request=EngineRequest("req-a", [5, 6, 7], sampling, priority=2, sampled_before=1),
        output_ids=(9, 10),
        seed=11,
        num_computed=4,
        cached_tokens=0,
        detokenizer=DetokenizerState((6, 7, 9, 10), 1, 3, "ab"),
    )
    assert state_from_proto("req-a", state_to_proto(state)) == state
    bad = state_to_proto(state)
    bad.num_computed = 5  # KV for more tokens than the request has
    with pytest.raises(KVRefused, match="num_computed"):
        state_from_proto("req-a", bad)
    bad = state_to_proto(state)
    bad.detok_read = 9
    with pytest.raises(KVRefused, match="detokenizer"):
        state_from_proto("req-a", bad)
