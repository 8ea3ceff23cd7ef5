"""The global KV index: which workers hold which prefix blocks, bounded in memory.

`GlobalKVIndex` is exact (fed by workers' KV events); `ApproximateIndex` learns from the router's
own dispatches for workers that publish no events. Both satisfy the `KVIndex` protocol and
report their `mode` for metrics. See docs/scheduling.md.
"""

from mainsail.router.kvindex.approximate import ApproximateIndex
from mainsail.router.kvindex.memory import GlobalKVIndex
from mainsail.router.kvindex.protocol import LOCAL_TIERS, TIERS, IndexStats, KVIndex

__all__ = ["LOCAL_TIERS", "TIERS", "ApproximateIndex", "GlobalKVIndex", "IndexStats", "KVIndex"]
