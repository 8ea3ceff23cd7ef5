"""A scripted `ExpertRouter` (the expert-parallel autoscaler's router seam) for the fast tier
of both autoscaling paths: the operator's (`test_expert_scaler.py`) and `mainsail up`'s
(`test_local_expert_autoscale.py`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from mainsail.operator.autoscale_policy import PoolSignals
from mainsail.operator.expert_merge import ExpertFigures, ExpertReading
from mainsail.operator.expert_parallel_policy import ExpertSignals
from mainsail.operator.expert_signals import ScaleFailed, WorkerDegree
from mainsail.operator.router_signals import SignalsUnavailable


def reading(signals: Mapping[str, ExpertSignals], queued: int = 0) -> ExpertReading:
    """What one router replica exports for ``signals`` when it holds ``queued`` requests."""
    return ExpertReading(
        {r: PoolSignals(s.workers, s.running, s.waiting, queued, 0, 0) for r, s in signals.items()},
        {r: ExpertFigures(s.current, int(s.switching), s.expert_load) for r, s in signals.items()},
    )


class ScriptedRouter:
    """An `ExpertRouter` answering what the test sets (``signals`` at every URL, unless
    ``per_url`` names it: None there is a replica that does not answer); records what it was
    asked."""

    def __init__(self) -> None:
        self.signals: dict[str, ExpertSignals] | None = None
        self.per_url: Mapping[str, ExpertReading | None] = {}
        self.read: list[str] = []
        self.degrees: dict[str, int] = {"w0": 1, "w1": 1}
        self.asked: list[tuple[str, str, int]] = []
        self.fail: str | None = None

    async def expert_reading(self, metrics_url: str) -> ExpertReading:
        self.read.append(metrics_url)
        if metrics_url in self.per_url:
            got = self.per_url[metrics_url]
        else:
            got = None if self.signals is None else reading(self.signals)
        if got is None:
            raise SignalsUnavailable("connection refused")
        return got

    async def workers(self, admin_url: str, token: str) -> Sequence[WorkerDegree]:
        return [WorkerDegree(w, "unified", d, d) for w, d in self.degrees.items()]

    async def scale(self, admin_url: str, token: str, worker_id: str, degree: int) -> None:
        if self.fail is not None:
            raise ScaleFailed(self.fail)
        self.asked.append((token, worker_id, degree))
        self.degrees[worker_id] = degree
