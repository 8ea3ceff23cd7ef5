"""Table-driven cases for the scorers: formulas, [0, 1] range, and declared reads."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import pytest

from mainsail.router.scheduling import (
    RequestInfo,
    SchedulingContext,
    WorkerSnapshot,
    default_registry,
)
from mainsail.router.scheduling.scorers._relative import relative_headroom
from mainsail.router.scheduling.scorers.adapter_affinity import AdapterAffinityScorer
from mainsail.router.scheduling.scorers.kv_prefix import KVPrefixScorer
from mainsail.router.scheduling.scorers.kv_utilization import KVUtilizationScorer
from mainsail.router.scheduling.scorers.queue_depth import QueueDepthScorer
from mainsail.router.scheduling.scorers.running_requests import RunningRequestsScorer
from mainsail.router.scheduling.types import CONTEXT_FIELDS, SNAPSHOT_FIELDS
from mainsail.router.testing import idle_worker

pytestmark = pytest.mark.unit

BASE = idle_worker()


def workers(*changes: dict[str, Any]) -> tuple[WorkerSnapshot, ...]:
    return tuple(dataclasses.replace(BASE, worker_id=f"w{i}", **c) for i, c in enumerate(changes))


def ctx(
    ws: tuple[WorkerSnapshot, ...],
    blocks: int = 0,
    hits: Mapping[str, int] | None = None,
    adapter: str | None = None,
) -> SchedulingContext:
    request = RequestInfo("r", tuple(range(blocks)), blocks * 16, 16, adapter=adapter)
    return SchedulingContext(request, ws, hits or {})


@pytest.mark.parametrize(
    ("loads", "slack", "expected"),
    [
        ([], 2.0, []),
        ([0, 0, 0], 2.0, [1.0, 1.0, 1.0]),
        ([0, 1, 2, 5], 2.0, [1.0, 0.5, 0.0, 0.0]),
        ([10, 11, 20, 40], 2.0, [1.0, 1 - 1 / 12, 1 - 10 / 12, 0.0]),  # relative to the least
        ([100, 101], 2.0, [1.0, 1 - 1 / 102]),  # a one-request gap at high load barely counts
    ],
)
def test_relative_headroom(loads: list[int], slack: float, expected: list[float]) -> None:
    assert relative_headroom(loads, slack) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("blocks", "hits", "expected"),
    [
        (4, {"w0": 4, "w1": 2}, [1.0, 0.5, 0.0]),
        (4, {"w1": 1}, [0.0, 0.25, 0.0]),
        (4, {}, [0.0, 0.0, 0.0]),
        (0, {"w0": 3}, [0.0, 0.0, 0.0]),  # no full block: no preference
        (2, {"w0": 5}, [1.0, 0.0, 0.0]),  # clipped to 1
    ],
)
def test_kv_prefix_is_hit_fraction(
    blocks: int, hits: dict[str, int], expected: list[float]
) -> None:
    ws = workers({}, {}, {})
    assert KVPrefixScorer().score(ctx(ws, blocks, hits), ws) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        # fresh reports, one router: pending = waiting
        (
            [
                {"waiting": 0, "running": 8, "outstanding": 8},
                {"waiting": 2, "running": 8, "outstanding": 10},
            ],
            [1.0, 0.0],
        ),
        # stale reports in a burst: in-flight requests the report lacks count as pending
        ([{"outstanding": 0}, {"outstanding": 1}, {"outstanding": 3}], [1.0, 0.5, 0.0]),
        # other routers' requests (running > outstanding) do not go negative
        ([{"running": 5, "outstanding": 1}, {"running": 0, "outstanding": 0}], [1.0, 1.0]),
    ],
)
def test_queue_depth_counts_waiting_plus_unreported(
    changes: list[dict[str, Any]], expected: list[float]
) -> None:
    ws = workers(*changes)
    assert QueueDepthScorer().score(ctx(ws), ws) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("outstanding", "expected"),
    [
        ([0, 0], [1.0, 1.0]),
        ([0, 1, 2], [1.0, 0.5, 0.0]),
        ([4, 6, 10], [1.0, 1 - 2 / 6, 0.0]),
    ],
)
def test_running_requests_relative_to_least_loaded(
    outstanding: list[int], expected: list[float]
) -> None:
    ws = workers(*({"outstanding": o} for o in outstanding))
    assert RunningRequestsScorer().score(ctx(ws), ws) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("used_total", "expected"),
    [((0, 100), 1.0), ((25, 100), 0.75), ((100, 100), 0.0), ((120, 100), 0.0), ((0, 0), 0.0)],
)
def test_kv_utilization_is_free_fraction(used_total: tuple[int, int], expected: float) -> None:
    ws = workers({"kv_blocks_used": used_total[0], "kv_blocks_total": used_total[1]})
    assert KVUtilizationScorer().score(ctx(ws), ws) == pytest.approx([expected])


@pytest.mark.parametrize(
    ("adapter", "expected"),
    [(None, [1.0, 1.0]), ("x", [1.0, 0.0]), ("z", [0.0, 0.0])],
)
def test_adapter_affinity(adapter: str | None, expected: list[float]) -> None:
    ws = workers({"adapters": frozenset({"x"})}, {"adapters": frozenset({"y"})})
    assert AdapterAffinityScorer().score(ctx(ws, adapter=adapter), ws) == expected


@pytest.mark.parametrize("cls", [QueueDepthScorer, RunningRequestsScorer])
def test_load_scorers_reject_bad_slack(cls: Any) -> None:
    with pytest.raises(ValueError, match="slack"):
        cls(slack=0)


class _Guard:
    """Forwards only the attributes a plugin declared; anything else is a test failure."""

    def __init__(self, target: object, allowed: frozenset[str]) -> None:
        self._target = target
        self._allowed = allowed

    def __getattr__(self, name: str) -> object:
        if name not in self._allowed:
            raise AssertionError(f"read undeclared field {name!r}")
        return getattr(self._target, name)


def _all_plugins() -> list[tuple[str, Any]]:
    reg = default_registry()
    return [
        *(("filter", f()) for f in reg.filters.values()),
        *(("scorer", s()) for s in reg.scorers.values()),
    ]


@pytest.mark.parametrize(("kind", "plugin"), _all_plugins(), ids=lambda p: getattr(p, "name", p))
def test_plugins_read_only_what_they_declare(kind: str, plugin: Any) -> None:
    assert plugin.reads <= SNAPSHOT_FIELDS | CONTEXT_FIELDS
    ws = workers({"outstanding": 1, "adapters": frozenset({"x"})}, {"waiting": 2})
    context = ctx(ws, blocks=4, hits={"w0": 2}, adapter="x")
    guarded_ctx: Any = _Guard(context, plugin.reads & CONTEXT_FIELDS)
    guarded: Any = [_Guard(w, plugin.reads & SNAPSHOT_FIELDS) for w in ws]
    out = (
        plugin.filter(guarded_ctx, guarded)
        if kind == "filter"
        else plugin.score(guarded_ctx, guarded)
    )
    assert len(out) <= len(ws)
    if kind == "scorer":
        assert all(0.0 <= s <= 1.0 for s in out)


def test_prefill_backlog_prefers_fewer_pending_prompt_tokens() -> None:
    from mainsail.router.scheduling.scorers.prefill_backlog import PrefillBacklogScorer

    scorer = PrefillBacklogScorer(slack=512)
    base = dataclasses.replace(BASE, pending_prefill_tokens=0)
    light = dataclasses.replace(base, worker_id="light", pending_prefill_tokens=100)
    heavy = dataclasses.replace(base, worker_id="heavy", pending_prefill_tokens=8000)
    same_requests = dataclasses.replace(base, worker_id="mid", pending_prefill_tokens=400)
    candidates = (light, heavy, same_requests)
    scores = scorer.score(ctx(candidates), list(candidates))
    assert scores[0] == 1.0
    assert scores[1] == 0.0
    assert 0.0 < scores[2] < 1.0
    with pytest.raises(ValueError, match="slack"):
        PrefillBacklogScorer(slack=0)
