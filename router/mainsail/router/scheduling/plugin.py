"""The three plugin kinds of a scheduling profile: filters, scorers and pickers.

Why batch interfaces (a whole candidate list in, a list out) rather than one worker at a time:
scorers normalise across candidates (load relative to the least-loaded worker), and one Python
call per plugin instead of one per (plugin, worker) keeps a decision over 1024 workers within
the routing-latency budget (docs/scheduling.md).

Every plugin declares `reads`: the `WorkerSnapshot` fields (and context fields such as
`prefix_hits`) it looks at, so the router knows which metrics it must collect and a test can
check that no plugin reads anything undeclared.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import ClassVar, Protocol

from mainsail.router.scheduling.types import SchedulingContext, WorkerSnapshot


class Filter(Protocol):
    """Keeps the candidates that may serve the request (order preserved)."""

    name: ClassVar[str]
    reads: ClassVar[frozenset[str]]

    def filter(
        self, ctx: SchedulingContext, candidates: Sequence[WorkerSnapshot]
    ) -> list[WorkerSnapshot]: ...


class Scorer(Protocol):
    """Scores every candidate in [0, 1]; higher is better. Output aligned with `candidates`."""

    name: ClassVar[str]
    reads: ClassVar[frozenset[str]]

    def score(
        self, ctx: SchedulingContext, candidates: Sequence[WorkerSnapshot]
    ) -> list[float]: ...


class Picker(Protocol):
    """Chooses one candidate index from the weighted totals (same order as candidates)."""

    name: ClassVar[str]
    reads: ClassVar[frozenset[str]]

    def pick(self, totals: Sequence[float]) -> int: ...


class PickerFactory(Protocol):
    """Builds a picker around the injected random source."""

    def __call__(self, rng: random.Random) -> Picker: ...
