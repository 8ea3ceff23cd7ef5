"""Recent expert load: the tokens routed to each expert, decayed so placement follows what the
model is asked *now*, not since the worker started.

Why decay: the rank counters (`ShardRank.expert_load`) only grow. Placed by them, a worker
that served code for an hour and now serves chat would still balance its experts for code,
and the autoscaler's imbalance figure would lag the same way. An exponentially decayed sum
forgets at a known rate and needs no window of samples: each read of the counters adds the
tokens routed since the previous read and halves what was there every ``half_life`` seconds,

    recent(t1) = recent(t0) * 0.5 ** ((t1 - t0) / half_life) + (count(t1) - count(t0))

so a token routed ``a`` seconds ago weighs ``0.5 ** (a / half_life)``. The first read takes
the counts as they are (everything so far is recent: the worker just started). A counter that
went down (a fresh rank 0) restarts from its new count. Pure: the state travels in and out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

HALF_LIFE_S = 60.0
"""Seconds for a routed token's weight to halve: the autoscaler changes degree on the scale of
its cooldown (30 s) and scale-down delay (60 s) and reads every 15 s; load older than ~5
minutes weighs under 4%."""


@dataclass(frozen=True)
class RecentLoad:
    """Decayed tokens per expert (``recent``), the counters at the last read (``counts``) and
    its time (``at``, seconds on the caller's clock; None before the first read)."""

    recent: tuple[float, ...] = ()
    counts: tuple[float, ...] = ()
    at: float | None = None


def observe(
    state: RecentLoad, counts: Sequence[float], now: float, half_life: float = HALF_LIFE_S
) -> RecentLoad:
    """The state after reading the counters ``counts`` at ``now`` (see the module doc)."""
    if not half_life > 0:
        raise ValueError(f"half_life must be > 0 seconds, got {half_life}")
    counts = tuple(float(c) for c in counts)
    if state.at is None or len(counts) != len(state.counts):
        return RecentLoad(counts, counts, now)
    keep = 0.5 ** (max(0.0, now - state.at) / half_life)
    recent = tuple(
        r * keep + (c - old if c >= old else c)
        for r, c, old in zip(state.recent, counts, state.counts, strict=True)
    )
    return RecentLoad(recent, counts, now)
