"""Names of the metrics the router exports and the operator's autoscaler reads: the contract
between the two, written once here (neither component imports the other).

Per role (label ``role``), ``POOL_PREFIX + field`` for each of ``POOL_FIELDS``; plus the
router-wide queue (requests no worker could take yet) and the registered-worker count.
"""

from __future__ import annotations

POOL_PREFIX = "mainsail_router_pool_"
POOL_FIELDS = ("running", "waiting", "outstanding", "kv_blocks_used", "kv_blocks_total")
QUEUED = "mainsail_router_queued_requests"
WORKERS = "mainsail_router_workers"
ROLE_LABEL = "role"
