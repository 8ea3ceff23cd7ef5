"""Table-driven cases for the scheduling filters (healthy, role, capacity, adapter)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from mainsail.router.scheduling import RequestInfo, SchedulingContext, WorkerSnapshot
from mainsail.router.scheduling.filters.adapter import AdapterFilter
from mainsail.router.scheduling.filters.capacity import CapacityFilter
from mainsail.router.scheduling.filters.healthy import HealthyFilter
from mainsail.router.scheduling.filters.role import RoleFilter
from mainsail.router.testing import idle_worker

pytestmark = pytest.mark.unit

BASE = idle_worker(max_num_seqs=4, max_model_len=1000)


def worker(worker_id: str, **changes: Any) -> WorkerSnapshot:
    return dataclasses.replace(BASE, worker_id=worker_id, **changes)


def ctx(*workers: WorkerSnapshot, **request: Any) -> SchedulingContext:
    fields: dict[str, Any] = {
        "request_id": "r",
        "block_hashes": (),
        "prompt_tokens": 100,
        "max_tokens": 100,
    }
    fields.update(request)
    return SchedulingContext(RequestInfo(**fields), tuple(workers))


def kept(plugin: Any, context: SchedulingContext) -> list[str]:
    return [w.worker_id for w in plugin.filter(context, context.workers)]


@pytest.mark.parametrize(
    ("health", "expected"),
    [
        ((True, True), ["a", "b"]),
        ((True, False), ["a"]),
        ((False, False), []),
    ],
)
def test_healthy_keeps_healthy_workers(health: tuple[bool, bool], expected: list[str]) -> None:
    c = ctx(worker("a", healthy=health[0]), worker("b", healthy=health[1]))
    assert kept(HealthyFilter(), c) == expected


@pytest.mark.parametrize(
    ("wanted", "expected"),
    [
        ("unified", ["u"]),
        ("prefill", ["u", "p"]),
        ("decode", ["u", "d"]),
        ("encode", ["e"]),
    ],
)
def test_role_matches_phase_and_unified_serves_both(wanted: str, expected: list[str]) -> None:
    c = ctx(
        worker("u", role="unified"),
        worker("p", role="prefill"),
        worker("d", role="decode"),
        worker("e", role="encode"),
        role=wanted,
    )
    assert kept(RoleFilter(), c) == expected


@pytest.mark.parametrize(
    ("changes", "request_tokens", "passes"),
    [
        ({}, (100, 100), True),
        ({"outstanding": 7}, (100, 100), True),  # below 2 * max_num_seqs
        ({"outstanding": 8}, (100, 100), False),  # router's own count saturates it
        ({"running": 4, "waiting": 4}, (100, 100), False),  # worker report saturates it
        ({"running": 4, "waiting": 3}, (100, 100), True),
        ({}, (900, 100), True),  # exactly fits max_model_len
        ({}, (900, 101), False),  # context does not fit
    ],
)
def test_capacity_drops_saturated_and_too_short(
    changes: dict[str, Any], request_tokens: tuple[int, int], passes: bool
) -> None:
    c = ctx(worker("a", **changes), prompt_tokens=request_tokens[0], max_tokens=request_tokens[1])
    assert kept(CapacityFilter(), c) == (["a"] if passes else [])


def test_capacity_rejects_bad_factor() -> None:
    with pytest.raises(ValueError, match="max_load_factor"):
        CapacityFilter(max_load_factor=0)


@pytest.mark.parametrize(
    ("adapter", "loaded", "expected"),
    [
        (None, ({"x"}, set()), ["a", "b"]),  # no adapter: everyone
        ("x", ({"x"}, set()), ["a"]),  # holders only
        ("x", ({"x"}, {"x", "y"}), ["a", "b"]),
        ("z", ({"x"}, {"y"}), ["a", "b"]),  # nobody holds it: anyone may load it
    ],
)
def test_adapter_prefers_holders_else_everyone(
    adapter: str | None, loaded: tuple[set[str], set[str]], expected: list[str]
) -> None:
    c = ctx(
        worker("a", adapters=frozenset(loaded[0])),
        worker("b", adapters=frozenset(loaded[1])),
        adapter=adapter,
    )
    assert kept(AdapterFilter(), c) == expected


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"role": "leader"}, "unknown role"),
        ({"running": -1}, "running must be >= 0"),
        ({"max_num_seqs": 0}, "max_num_seqs"),
    ],
)
def test_snapshot_validates_at_the_edge(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        worker("a", **changes)


def test_request_validates_role() -> None:
    with pytest.raises(ValueError, match="unknown role"):
        RequestInfo("r", (), 1, 1, role="chef")
