"""Admission re-checked while requests wait (`admission.recheck`): a waiting request whose
predicted TTFT can no longer meet its target is refused when that becomes true, in the flow
queue's service order, and sheddable requests go first under pressure — examples, then
invariants with Hypothesis."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mainsail.router.scheduling import RequestInfo, WorkerSnapshot
from mainsail.router.scheduling.admission import Waiting, predict_ttft, recheck
from mainsail.router.testing import idle_worker
from mainsail.sim.cost import load_profile

pytestmark = pytest.mark.unit
COST = load_profile("cpu-tiny").step_cost()
BLOCK = 16


def _waiting(
    key: str, waited: float, target: float, priority: int = 0, prompt: int = 256
) -> Waiting[str]:
    return Waiting(key, priority, RequestInfo(key, (), prompt, 8), {}, waited, target)


def test_a_request_that_can_still_make_it_stays_and_one_that_cannot_is_refused() -> None:
    workers = [idle_worker("w", running=4, kv_blocks_used=40)]
    alone = predict_ttft(COST, workers[0], 256, 0, BLOCK)
    waiting = [
        _waiting("fresh", waited=0.0, target=alone * 2),
        _waiting("stale", waited=alone * 5, target=alone * 5.5),
    ]
    refusals = recheck(COST, workers, waiting, block_size=BLOCK)
    assert [r.key for r in refusals] == ["stale"]
    (late,) = refusals
    assert not late.shed and late.predicted_s > alone * 5.5
    assert "target" in late.reason and late.retry_after_s >= 1
    # Headroom above 1 tolerates it; nothing at all is refused without workers to predict for.
    assert recheck(COST, workers, waiting, block_size=BLOCK, headroom=3) == []
    assert recheck(COST, [], waiting, block_size=BLOCK) == []


def test_requests_are_predicted_behind_the_ones_served_before_them() -> None:
    workers = [idle_worker("w")]
    one = predict_ttft(COST, workers[0], 512, 0, BLOCK)
    # Ten identical requests with a target of about three prefills: the first ones make it,
    # the later ones (behind more prompts) do not; refused ones no longer count as ahead.
    waiting = [_waiting(f"r{i}", 0.0, 3 * one, prompt=512) for i in range(10)]
    refused = {r.key for r in recheck(COST, workers, waiting, block_size=BLOCK)}
    kept = [w.key for w in waiting if w.key not in refused]
    assert kept == [f"r{i}" for i in range(len(kept))] and 1 <= len(kept) < 10


def test_sheddable_requests_go_first_under_pressure() -> None:
    workers = [idle_worker("w")]
    waiting = [
        _waiting("ok", 0.0, 10.0),
        _waiting("late", 9.0, 9.001),
        _waiting("batch", 0.0, 60.0, priority=-1),
    ]
    refusals = {r.key: r for r in recheck(COST, workers, waiting, block_size=BLOCK)}
    assert set(refusals) == {"late", "batch"}
    assert refusals["batch"].shed and "sheddable" in refusals["batch"].reason
    # No pressure, no shedding.
    calm = [w for w in waiting if w.key != "late"]
    assert recheck(COST, workers, calm, block_size=BLOCK) == []
    # A sheddable request that misses its own target is refused, but puts no pressure on others.
    lone = [_waiting("b1", 9.0, 9.001, priority=-1), _waiting("b2", 0.0, 60.0, priority=-1)]
    assert [r.key for r in recheck(COST, workers, lone, block_size=BLOCK)] == ["b1"]


_workers = st.lists(
    st.builds(
        lambda i, running, pending, waiting, role: idle_worker(
            f"w{i}",
            running=running,
            kv_blocks_used=running * 4,
            pending_prefill_tokens=pending,
            waiting=waiting,
            role=role,
        ),
        st.integers(0, 1000),
        st.integers(0, 32),
        st.integers(0, 5000),
        st.integers(0, 8),
        st.sampled_from(["unified", "unified", "decode"]),
    ),
    max_size=3,
    unique_by=lambda w: w.worker_id,
)
_queue = st.lists(
    st.tuples(
        st.sampled_from([-1, 0, 0, 2]),
        st.integers(1, 1500),
        st.floats(0.0, 3.0),
        st.floats(0.05, 3.0),
    ),
    max_size=25,
)


def _as_waiting(queue: list[tuple[int, int, float, float]]) -> list[Waiting[int]]:
    # Service order puts higher bands first, as the flow queue does.
    ordered = sorted(enumerate(queue), key=lambda item: -item[1][0])
    return [
        Waiting(i, p, RequestInfo(str(i), (), prompt, 8), {}, waited, target)
        for i, (p, prompt, waited, target) in ordered
    ]


@settings(max_examples=150, deadline=None)
@given(workers=_workers, queue=_queue, headroom=st.sampled_from([0.5, 1.0, 2.0]))
def test_recheck_invariants(
    workers: list[WorkerSnapshot], queue: list[tuple[int, int, float, float]], headroom: float
) -> None:
    waiting = _as_waiting(queue)
    refusals = recheck(COST, workers, waiting, block_size=BLOCK, headroom=headroom)
    keys = [r.key for r in refusals]
    by_key = {w.key: w for w in waiting}
    # Only waiting requests, each at most once.
    assert len(keys) == len(set(keys)) and set(keys) <= set(by_key)
    refused = set(keys)
    kept = [w for w in waiting if w.key not in refused]
    # Every refusal for lateness is justified: even the best worker, behind the requests
    # kept before it, misses headroom x target.
    for r in refusals:
        if not r.shed:
            w = by_key[r.key]
            assert r.predicted_s > headroom * w.target_s
            assert r.retry_after_s >= 1
        else:
            assert by_key[r.key].priority < 0
    # Sheddable requests go first: if any request of priority >= 0 was refused as late, no
    # sheddable request is left waiting.
    if any(not r.shed and by_key[r.key].priority >= 0 for r in refusals):
        assert all(w.priority >= 0 for w in kept)
    # A fixed point: re-checking what is left refuses nothing more.
    assert recheck(COST, workers, kept, block_size=BLOCK, headroom=headroom) == []
    # The head of the queue is refused only if it misses even with nothing ahead of it.
    if waiting and waiting[0].key in refused and not refusals[0].shed:
        head = waiting[0]
        alone = recheck(COST, workers, [head], block_size=BLOCK, headroom=headroom)
        assert [r.key for r in alone] == [head.key]
