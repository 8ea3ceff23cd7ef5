"""KV tiers below the device cache: the shared Redis tier (and its cost model).

Blocks are keyed by the chained block hash (`mainsail.spec.kvhash`), so any worker of the
deployment can reuse a block another worker computed.
"""

from mainsail.workers.kvtier.codec import BlockCodec
from mainsail.workers.kvtier.cost import FetchCostModel
from mainsail.workers.kvtier.redis_tier import RedisKVTier, TierStats

__all__ = ["BlockCodec", "FetchCostModel", "RedisKVTier", "TierStats"]
