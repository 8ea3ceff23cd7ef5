"""KV tiers below the device cache: the shared Redis tier, its cost model and engine plumbing.

Blocks are keyed by the chained block hash (`mainsail.spec.kvhash`) under a namespace naming
the model (`kv_namespace`), so any worker of the deployment can reuse a block another worker
computed. `BlockWriter` writes committed blocks through in the background; `BlockLoader`
probes and fetches a prompt's next blocks; `FetchCostModel` decides when fetching wins;
`ShardedKVTier` spreads the blocks over several servers (the cache pool's replicas).
"""

from mainsail.workers.kvtier.codec import BlockCodec
from mainsail.workers.kvtier.cost import FETCH_POLICIES, FetchCostModel, FetchPolicy, decide_fetch
from mainsail.workers.kvtier.identity import checkpoint_digest, kv_namespace
from mainsail.workers.kvtier.loader import BlockLoader, LoadResult
from mainsail.workers.kvtier.redis_tier import RedisKVTier, RedisTierFactory, TierStats
from mainsail.workers.kvtier.sharded import HashRing, KVTier, ShardedKVTier
from mainsail.workers.kvtier.writer import BlockWriter, WriterStats

__all__ = [
    "FETCH_POLICIES",
    "BlockCodec",
    "BlockLoader",
    "BlockWriter",
    "FetchCostModel",
    "FetchPolicy",
    "HashRing",
    "KVTier",
    "LoadResult",
    "RedisKVTier",
    "RedisTierFactory",
    "ShardedKVTier",
    "TierStats",
    "WriterStats",
    "checkpoint_digest",
    "decide_fetch",
    "kv_namespace",
]
