"""The engine's view of the one KV cost model (`mainsail.spec.kv_cost`), re-exported.

Why a re-export: the model lives with the contracts so the router and the simulator price a
prefix with the very figures the engine measures and decides with; the engine's modules keep
importing it from here.
"""

from mainsail.spec.kv_cost import (
    FETCH_POLICIES,
    FetchCostModel,
    FetchPolicy,
    decide_fetch,
    prefix_seconds,
)

__all__ = ["FETCH_POLICIES", "FetchCostModel", "FetchPolicy", "decide_fetch", "prefix_seconds"]
