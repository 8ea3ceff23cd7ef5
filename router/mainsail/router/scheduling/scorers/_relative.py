"""Load normalised against the least-loaded candidate, shared by the load scorers.

Formula, for loads ``x_i`` of the candidates and ``m = min_i x_i``:

    s_i = 1 - min(1, (x_i - m) / (m + slack))

so the least-loaded candidate scores 1, and a candidate scores 0 once it carries at least
``2 m + slack``: twice the least-loaded plus a small absolute slack.

Why relative, not min-max: min-max (``(max - x) / (max - min)``) swings fully on a one-request
difference at any load (100 vs 101 counts like 0 vs 1), which throws cache affinity away;
normalising by capacity (``x / max_num_seqs``) barely moves until a worker is full, which is how
peers' cache-aware routers pile everything on one backend. Relative load grows with imbalance
and saturates at 2x the least-loaded, the same bound the live benchmark puts on request spread.
"""

from __future__ import annotations

from collections.abc import Sequence


def relative_headroom(loads: Sequence[float], slack: float) -> list[float]:
    """Scores in [0, 1], 1 for the least loaded; ``slack`` > 0 is in the loads' unit."""
    if not loads:
        return []
    low = min(loads)
    inv = 1.0 / (low + slack)
    # conditional expressions, not min(): this runs once per worker per decision
    return [1.0 - d if (d := (x - low) * inv) < 1.0 else 0.0 for x in loads]
