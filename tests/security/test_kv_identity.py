"""Two checkpoints must never share KV, and two tenants never a cached prefix.

The model identity digest reads every byte of every weight file: checkpoints that differ
only outside the middle of a file (where a sample used to be read) still get different
namespaces. The cache namespace (the tenant) changes every block hash, as the adapter does;
no namespace hashes exactly as before (deployments without tenants keep their caches).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mainsail.spec.kvhash import chain_hashes, hash_key
from mainsail.workers.kvtier import checkpoint_digest

pytestmark = pytest.mark.security


def _checkpoint(root: Path, weights: bytes) -> Path:
    root.mkdir()
    (root / "config.json").write_text('{"hidden_size": 64}')
    (root / "model.safetensors").write_bytes(weights)
    return root


def test_checkpoints_differing_in_one_byte_anywhere_have_different_identities(
    tmp_path: Path,
) -> None:
    size = 1 << 20
    base = bytearray(b"\x01" * size)
    digests = {checkpoint_digest(_checkpoint(tmp_path / "base", bytes(base)))}
    for where in (0, size // 4, size - 1):
        changed = bytearray(base)
        changed[where] ^= 0xFF
        digests.add(checkpoint_digest(_checkpoint(tmp_path / f"at-{where}", bytes(changed))))
    assert len(digests) == 4
    # Same bytes, another directory: the same model.
    assert checkpoint_digest(_checkpoint(tmp_path / "copy", bytes(base))) in digests


def test_cache_namespaces_never_share_a_block_hash() -> None:
    tokens = list(range(64))
    shared = chain_hashes(tokens, 16, 7, hash_key(None, None))
    assert shared == chain_hashes(tokens, 16, 7)  # no tenant: unchanged hashing
    a = chain_hashes(tokens, 16, 7, hash_key(None, "tenant-a"))
    b = chain_hashes(tokens, 16, 7, hash_key(None, "tenant-b"))
    lora_a = chain_hashes(tokens, 16, 7, hash_key("lora", "tenant-a"))
    assert a == chain_hashes(tokens, 16, 7, hash_key(None, "tenant-a"))  # shared inside one
    blocks = [set(x) for x in (shared, a, b, lora_a, chain_hashes(tokens, 16, 7, "lora"))]
    for i, left in enumerate(blocks):
        for right in blocks[i + 1 :]:
            assert not left & right
