"""Names of the metrics the router exports and the operator's autoscaler reads: the contract
between the two, written once here (neither component imports the other).

Per role (label ``role``), ``POOL_PREFIX + field`` for each of ``POOL_FIELDS``; plus the
router-wide queue (requests no worker could take yet) and the registered-worker count; plus,
for sharded mixture-of-experts pools, the expert-parallel degree and expert load.
"""

from __future__ import annotations

POOL_PREFIX = "mainsail_router_pool_"
POOL_FIELDS = ("running", "waiting", "outstanding", "kv_blocks_used", "kv_blocks_total")
QUEUED = "mainsail_router_queued_requests"
WORKERS = "mainsail_router_workers"
ROLE_LABEL = "role"

# Sharded mixture-of-experts pools (the expert-parallel autoscaler's signals, per role):
EXPERT_PARALLEL = "mainsail_router_expert_parallel"
"""The lowest expert-parallel degree the role's workers run (0: none is a sharded MoE)."""
EXPERT_SWITCHING = "mainsail_router_expert_parallel_switching"
"""The role's workers still moving to another expert-parallel degree."""
EXPERT_TOKENS = "mainsail_router_expert_tokens"
"""Tokens routed to each expert (label ``expert``), summed over the role's workers."""
EXPERT_LABEL = "expert"
