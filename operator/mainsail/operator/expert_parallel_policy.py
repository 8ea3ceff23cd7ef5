"""Which expert-parallel (EP) degree a pool's workers should run: pure functions, no I/O.

Why a degree can change at all: a mixture-of-experts worker places its experts on ``ep``
rank actors and can move to another degree while serving (elastic EP,
docs/parallelism.md). More ranks compute a step's experts in parallel, so a worker carries
more concurrent sequences; fewer ranks free CPUs/GPUs when the load falls.

Signals (per pool, from the router's scrape, see `mainsail.spec.pool_signals`): the degree
the workers run, the requests running and waiting per worker (plus those the router holds),
and the tokens the gate routed to each expert recently (decayed by the worker, as it places
experts by them), summed over the pool's workers. How much of a
rank one request is worth is the spec's ``targetRequestsPerRank``::

    needed        = (running + waiting + queued) / workers / targetRequestsPerRank
    effective(d)  = total expert load / the busiest rank's load, experts placed on d ranks
                    as the worker places them (heaviest first onto the least-loaded rank,
                    at most ceil(E/d) each); = d when the load is even or unmeasured
    up(d)         : effective(d) >= needed
    down(d)       : effective(d) * SCALE_DOWN_HEADROOM >= needed

The recommendation is the smallest valid degree satisfying ``up`` (the largest valid one if
none does); a lower degree is only taken when it satisfies ``down`` too, so the two
thresholds leave a band in which the degree holds (hysteresis). Skewed expert load lowers
``effective``: a pool whose hot experts sit on one rank asks for more ranks than an even one.

Valid degrees: within ``[min, max]``, a multiple of ``tensorParallel`` (the CRD's rule) and a
divisor of the number of experts (every rank holds the same number of experts).

Stabilisation, so the degree never flaps: no change within ``cooldown`` seconds of the last
one (a resize starts rank actors and loads weights; the next reading must see its effect),
none while a worker is still switching, and a scale-down only once the lower recommendation
has held for the whole ``scaleDownDelay`` (``lower_since``, the caller's state, returned
updated). A scale-up happens at once (after the cooldown): a queue costs latency now.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

SCALE_DOWN_HEADROOM = 0.75
"""A lower degree must carry the load at no more than 75% of its target to be chosen."""


@dataclass(frozen=True)
class ExpertBounds:
    """What the spec allows: ``expertParallel {min, max}`` and ``tensorParallel``."""

    min: int
    max: int
    tensor_parallel: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.max:
            raise ValueError("ExpertBounds: need 1 <= min <= max")
        if self.tensor_parallel < 1:
            raise ValueError("ExpertBounds.tensor_parallel must be >= 1")


@dataclass(frozen=True)
class ExpertTargets:
    """The knobs: load one expert rank should carry, and the stabilisation times."""

    requests_per_rank: float = 4.0
    cooldown_seconds: float = 30.0
    scale_down_delay_seconds: float = 60.0

    def __post_init__(self) -> None:
        if not self.requests_per_rank > 0:
            raise ValueError("ExpertTargets.requests_per_rank must be > 0")
        if self.cooldown_seconds < 0 or self.scale_down_delay_seconds < 0:
            raise ValueError("ExpertTargets: times must be >= 0")


@dataclass(frozen=True)
class ExpertSignals:
    """A pool's expert-parallel state and load as the router last saw it.

    ``current`` is the degree the pool's workers run (the lowest, if they differ; 0 when no
    worker reports one); ``switching`` that some worker is still moving to another degree;
    ``expert_load`` the tokens routed to each expert, summed over the workers (its length is
    the model's number of experts; empty when unknown).
    """

    current: int
    workers: int
    running: int
    waiting: int
    expert_load: tuple[float, ...] = ()
    switching: bool = False

    def __post_init__(self) -> None:
        for name in ("current", "workers", "running", "waiting"):
            if getattr(self, name) < 0:
                raise ValueError(f"ExpertSignals.{name} must be >= 0")
        if any(not x >= 0 for x in self.expert_load):
            raise ValueError("ExpertSignals.expert_load must be >= 0 (and not NaN)")


@dataclass(frozen=True)
class ExpertDecision:
    """The degree to run, what the load alone asked for, why, and the caller's new state."""

    target: int
    recommended: int
    reason: str
    lower_since: float | None
    imbalance: float = 1.0


def valid_degrees(bounds: ExpertBounds, num_experts: int) -> list[int]:
    """Degrees the pool may run, ascending (empty if none fits the model)."""
    return [
        d
        for d in range(bounds.min, min(bounds.max, num_experts) + 1)
        if d % bounds.tensor_parallel == 0 and num_experts % d == 0
    ]


def busiest_share(load: Sequence[float], ranks: int) -> float:
    """The busiest rank's load when ``load``'s experts are placed on ``ranks`` ranks the way
    the worker places them (heaviest first onto the least-loaded rank with room, at most
    ``ceil(E / ranks)`` each); 0 when nothing was measured."""
    if ranks < 1 or not load:
        raise ValueError("busiest_share needs ranks >= 1 and at least one expert")
    cap = -(-len(load) // ranks)
    totals = [0.0] * ranks
    held = [0] * ranks
    for expert in sorted(range(len(load)), key=lambda e: (-load[e], e)):
        rank = min((r for r in range(ranks) if held[r] < cap), key=lambda r: (totals[r], r))
        totals[rank] += load[expert]
        held[rank] += 1
    return max(totals)


def effective_ranks(load: Sequence[float], ranks: int) -> float:
    """How many ranks' worth of expert work ``ranks`` ranks do in parallel: total load over
    the busiest rank's (``ranks`` when the load is even or unmeasured)."""
    total = float(sum(load))
    if total <= 0:
        return float(ranks)
    return total / busiest_share(load, ranks)


def decide(
    bounds: ExpertBounds,
    targets: ExpertTargets,
    signals: ExpertSignals,
    *,
    now: float,
    last_change: float | None,
    lower_since: float | None,
) -> ExpertDecision:
    """The degree the pool should run now (see the module docstring).

    ``last_change``: when the degree was last changed (None: never); ``lower_since``: since
    when the recommendation has been below ``signals.current`` (None: it is not).
    """
    current = signals.current
    degrees = valid_degrees(bounds, len(signals.expert_load))
    if current < 1 or not degrees:
        why = (
            "no worker reports an expert-parallel degree"
            if current < 1
            else f"no degree in {bounds.min}..{bounds.max} divides the "
            f"{len(signals.expert_load)} experts (and is a multiple of tensorParallel "
            f"{bounds.tensor_parallel})"
        )
        return ExpertDecision(current, current, why, None)
    load = signals.expert_load
    imbalance = imbalance_of(load, current)
    demand = signals.running + signals.waiting
    per_worker = demand / max(signals.workers, 1)
    needed = per_worker / targets.requests_per_rank
    up = [d for d in degrees if effective_ranks(load, d) >= needed]
    recommended = up[0] if up else degrees[-1]
    if recommended < current:  # hysteresis: a lower degree must have headroom too
        lower = [
            d
            for d in degrees
            if d < current and effective_ranks(load, d) * SCALE_DOWN_HEADROOM >= needed
        ]
        above = [d for d in degrees if d >= current]
        recommended = lower[0] if lower else (above[0] if above else degrees[-1])
    said = (
        f"{per_worker:.1f} requests per worker, target {targets.requests_per_rank:g} per rank "
        f"(needs {needed:.2f} ranks; expert imbalance {imbalance:.2f} at ep {current})"
    )
    if current not in degrees:  # the spec's range moved: go to the nearest allowed degree
        inside = min(degrees, key=lambda d: (abs(d - current), d))
        return ExpertDecision(
            inside,
            recommended,
            f"ep {current} is outside the allowed degrees {degrees}; {said}",
            None,
            imbalance,
        )
    lower_since = (
        (lower_since if lower_since is not None else now) if recommended < current else None
    )
    if recommended == current:
        return ExpertDecision(current, recommended, said, lower_since, imbalance)
    hold = None
    if signals.switching:
        hold = "a worker is still switching degree"
    elif last_change is not None and now - last_change < targets.cooldown_seconds:
        hold = f"cooldown {targets.cooldown_seconds:g}s since the last change"
    elif (
        recommended < current
        and lower_since is not None
        and (now - lower_since < targets.scale_down_delay_seconds)
    ):
        hold = f"scale-down delay {targets.scale_down_delay_seconds:g}s"
    if hold is not None:
        return ExpertDecision(
            current, recommended, f"{said}; wants ep {recommended}, holding ({hold})",
            lower_since, imbalance,
        )  # fmt: skip
    return ExpertDecision(recommended, recommended, said, None, imbalance)


def pool_degree(degrees: Sequence[int]) -> int:
    """The pool's current degree from its workers' reports (the lowest; 0 when none)."""
    reported = [d for d in degrees if d > 0]
    return min(reported) if reported else 0


def imbalance_of(load: Sequence[float], ranks: int) -> float:
    """Busiest rank over the mean rank (1.0 = even), experts placed as the worker would."""
    total = float(sum(load))
    if total <= 0 or not load or ranks < 1:
        return 1.0
    return busiest_share(load, ranks) * ranks / total
