"""The shared KV tier (Redis) of a simulated cluster: capacity in blocks, LRU, fetch cost.

Why: device caches hold a fraction of a production trace's reuse distance (`bench/kv_reuse.py`:
the Mooncake hour's median reuse distance is ~4.8 M tokens, 12 H100s' worth of KV), so the
tier below them is what a cluster's hit rate depends on, and what the router must price.

What is modelled, as the real tier does it (`mainsail.workers.kvtier`):
- Every block a worker commits is written through to the tier (and published to the router as
  a "stored" event of tier ``redis``). The tier evicts least-recently-used blocks on its own
  and, like Redis, tells nobody: the router's index learns no "removed" events for this tier.
- A request whose leading blocks beyond the worker's local hits are in the tier is parked
  while they are fetched, when `decide_fetch` says fetching beats recomputing, for
  ``FetchCostModel.fetch_seconds(blocks)`` (the one cost model, `mainsail.spec.kv_cost`); the
  fetched blocks then sit in the worker's cache as ordinary prefix hits.

Several stores (`TierSettings.stores` > 1): the workers are split into that many contiguous
groups ("racks"), each writing to and reading from its own store of ``capacity_blocks`` (a
Redis per rack, or per worker with ``stores == workers``), with its own tier id, so a block one
rack stored is a fetch only for that rack's workers. This is where pricing tier-held prefixes
can decide something: with one store every worker fetches the same prefix at the same cost.

Not modelled: the existence probe's round trip when the tier holds nothing (sub-millisecond),
contention between concurrent fetches for the tier's bandwidth, and write bandwidth.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from mainsail.sim.cost import GPUProfile
from mainsail.spec.kv_cost import FetchCostModel


@dataclass(frozen=True)
class TierSettings:
    """The KV tier. ``capacity_blocks`` (per store) 0 = no tier; bandwidth in bytes/s;
    ``stores`` separate stores, each serving a contiguous group of the workers."""

    capacity_blocks: int = 0
    bandwidth_bps: float = 10e9  # a 100 Gb/s network, most of it used
    rtt_s: float = 0.0005
    stores: int = 1

    def __post_init__(self) -> None:
        if self.capacity_blocks < 0 or self.bandwidth_bps <= 0 or self.rtt_s < 0:
            raise ValueError("tier: capacity >= 0, bandwidth > 0 and rtt >= 0 required")
        if self.stores < 1:
            raise ValueError("tier: stores >= 1 required")

    def store_of(self, worker: int, workers: int) -> int:
        """The store worker ``worker`` of ``workers`` uses (contiguous, near-equal groups)."""
        if not 0 <= worker < workers or self.stores > workers:
            raise ValueError(f"tier: worker {worker} of {workers}, {self.stores} stores")
        return worker * self.stores // workers


def cost_model(profile: GPUProfile, block_size: int, tier: TierSettings) -> FetchCostModel:
    """The `FetchCostModel` a worker of ``profile`` would measure.

    The prefill rate is what the engine's moving average converges to on full prefill chunks:
    one chunk of ``max_batched_tokens`` over no cached context, per token.
    """
    chunk = profile.max_batched_tokens
    return FetchCostModel(
        block_bytes=profile.kv_bytes_per_token * block_size,
        block_size=block_size,
        rtt_s=tier.rtt_s,
        bandwidth_bps=tier.bandwidth_bps,
        prefill_s_per_token=profile.prefill_time(chunk) / chunk,
    )


class SimSharedTier:
    """Block hashes held by one store of the tier, least recently used first."""

    TIER_ID = "sim-redis"

    def __init__(self, capacity_blocks: int, tier_id: str = TIER_ID) -> None:
        if capacity_blocks < 1:
            raise ValueError("capacity_blocks must be >= 1")
        self.capacity = capacity_blocks
        self.tier_id = tier_id  # workers with the same id read each other's blocks
        self._blocks: OrderedDict[int, None] = OrderedDict()
        self.evictions = 0
        self.fetched_blocks = 0

    def __len__(self) -> int:
        return len(self._blocks)

    def store(self, hashes: Sequence[int]) -> list[int]:
        """Writes ``hashes`` through (refreshing known ones); returns the newly stored."""
        blocks = self._blocks
        new: list[int] = []
        for h in hashes:
            if h in blocks:
                blocks.move_to_end(h)
            else:
                blocks[h] = None
                new.append(h)
        over = len(blocks) - self.capacity
        for _ in range(max(0, over)):
            blocks.popitem(last=False)
        self.evictions += max(0, over)
        return new

    def prefix(self, hashes: Sequence[int]) -> int:
        """Leading ``hashes`` held (no refresh: a probe)."""
        n = 0
        for h in hashes:
            if h not in self._blocks:
                break
            n += 1
        return n

    def fetch(self, hashes: Sequence[int]) -> None:
        """A read of ``hashes``: refreshes them."""
        blocks = self._blocks
        for h in hashes:
            if h in blocks:
                blocks.move_to_end(h)
        self.fetched_blocks += len(hashes)
