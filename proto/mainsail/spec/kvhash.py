"""The one KV block hash shared by workers, the router's index and the cache tiers.

Why one function: KV-aware routing only works when every party names a block the same way.
Peers let engines and routers disagree on block size, hash seed or hash function and then
degrade silently; Mainsail computes every block id here, from parameters that the deployment
spec sets once (`KVHashConfig`), and compares `KVHashConfig.fingerprint()` on registration.

Definition (also in docs/protocol.md):

    h_0 = seed                                     (unsigned 64-bit)
    h_i = BLAKE2b-64( key = "mainsail-kv-v1",
                      data = le_u64(h_{i-1}) || le_u32(t_{i,0}) || ... || le_u32(t_{i,B-1}) )

where ``t_{i,*}`` are the ``B = block_size`` token ids of block ``i`` (only *full* blocks are
hashed; a trailing partial block has no id). ``h_i`` is read as an unsigned little-endian
64-bit integer. Chaining makes a block's id depend on the whole prefix before it, so equal ids
mean equal prefixes (up to 64-bit collisions). Optionally an adapter name is mixed into the
seed, so the same tokens under different LoRA adapters never share KV, and so is a cache
namespace (the tenant, `hash_key`), so two tenants never share a cached prefix: without it,
`usage.cached_tokens` would tell one tenant, block by block, what another one sent.

Cost: one BLAKE2b call over ``8 + 4*B`` bytes per block, linear in the prompt's blocks.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

_KEY = b"mainsail-kv-v1"
HASH_ALGORITHM = "blake2b-64-chained-v1"


class KVHashConfig(BaseModel):
    """Parameters every party must agree on before exchanging block ids.

    The router refuses a worker whose fingerprint differs from its own.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    block_size: int = Field(16, ge=1, le=4096, description="Tokens per KV block.")
    hash_seed: int = Field(
        0, ge=0, lt=2**64, description="Seed of the chain; change it to isolate tenants."
    )
    algorithm: str = Field(HASH_ALGORITHM, description="Name and version of the hash function.")

    def fingerprint(self) -> str:
        """A short string that is equal exactly when two configs hash blocks identically."""
        return f"{self.algorithm}/b{self.block_size}/s{self.hash_seed}"


def adapter_seed(seed: int, adapter: str | None) -> int:
    """Seed for a request under a LoRA adapter (the base model uses ``seed`` unchanged)."""
    if not adapter:
        return seed
    digest = hashlib.blake2b(
        struct.pack("<Q", seed) + adapter.encode(), digest_size=8, key=_KEY
    ).digest()
    return int.from_bytes(digest, "little")


def hash_key(adapter: str | None, namespace: str | None = None) -> str | None:
    """What is mixed into the seed for a request: its adapter and its cache namespace.

    ``None`` for the base model in the shared namespace (the seed is used unchanged, so
    deployments without tenants hash exactly as before)."""
    if not namespace:
        return adapter or None
    return f"{adapter or ''}\x00ns:{namespace}"


def block_hash(parent: int, tokens: Sequence[int]) -> int:
    """Hash of one full block given its parent's hash (or the seed for the first block)."""
    data = struct.pack(f"<Q{len(tokens)}I", parent, *tokens)
    return int.from_bytes(hashlib.blake2b(data, digest_size=8, key=_KEY).digest(), "little")


def chain_hashes(
    token_ids: Sequence[int], block_size: int, seed: int = 0, adapter: str | None = None
) -> list[int]:
    """Ids of every full block of ``token_ids``, in order; a partial tail is not hashed."""
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    parent = adapter_seed(seed, adapter)
    full = len(token_ids) - len(token_ids) % block_size
    out: list[int] = []
    fmt = f"<Q{block_size}I"
    pack = struct.pack
    blake = hashlib.blake2b
    for start in range(0, full, block_size):
        data = pack(fmt, parent, *token_ids[start : start + block_size])
        parent = int.from_bytes(blake(data, digest_size=8, key=_KEY).digest(), "little")
        out.append(parent)
    return out
