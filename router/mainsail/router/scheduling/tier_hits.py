"""Which leading blocks each worker can read from its shared KV tier, whoever wrote them.

Why a function of its own: the KV index records blocks in the ``redis`` tier under the worker
that wrote them (that is who reports the event), but a shared tier is shared: every worker
configured with the same store and key namespace (`WorkerSnapshot.kv_tier_id`) can fetch a
block any of them wrote. So a worker's tier prefix is the longest prefix held by any writer of
its tier group. Workers without a tier (id ``""``) read nothing from it.

Pure: the router and the simulator call it with the index's per-writer depths.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from mainsail.router.scheduling.types import WorkerSnapshot


def shared_tier_hits(
    writer_depths: Mapping[str, int],
    tier_of: Mapping[str, str],
    workers: Iterable[WorkerSnapshot],
) -> dict[str, int]:
    """Worker id -> leading blocks readable from its tier (workers with 0 omitted).

    ``writer_depths``: per writer, the leading blocks it holds in the shared tier (from
    ``index.longest_prefix(hashes, tiers=("redis",))``). ``tier_of``: tier id of every worker
    the router knows (writers that left keep no entry, so their blocks count for nobody:
    the index forgets them too).
    """
    if not writer_depths:
        return {}
    best: dict[str, int] = {}
    for writer, depth in writer_depths.items():
        group = tier_of.get(writer, "")
        if group and depth > best.get(group, 0):
            best[group] = depth
    if not best:
        return {}
    out: dict[str, int] = {}
    for w in workers:
        depth = best.get(w.kv_tier_id, 0) if w.kv_tier_id else 0
        if depth:
            out[w.worker_id] = depth
    return out
