"""`KVEvent`: what the router's KV index learns from this engine.

"stored" is emitted when a full block gets its hash (its KV is now reusable); "removed" when a
hashed block is evicted to make room. Tier "device" is this engine's paged cache; tier "redis"
reports blocks this engine wrote to the shared Redis tier (Redis evicts on its own, so that
tier has no "removed" events). Hashes are `mainsail.spec.kvhash` chain hashes, so the
router can match them against prompts without asking the engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class KVEvent:
    """One batch of block hashes that appeared in or left a tier."""

    kind: Literal["stored", "removed"]
    block_hashes: list[int]
    tier: Literal["device", "host", "redis"] = "device"
