"""Automatic live migration: the pure move planner, and rounds over the real request path with
fake workers (real workers are moved by the same `Router.migrate` in tests/e2e)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.router.routing.rebalance import Move, WorkerLoad, plan_moves
from mainsail.router.routing.router import Router
from mainsail.router.testing import FakeTransport, add_fake_worker, fake_router
from mainsail.spec.deployment import Rebalance

pytestmark = pytest.mark.unit
ON = Rebalance(enabled=True, min_waiting=2, load_gap=0.25, max_moves_per_round=4)


def w(name: str, running: int, waiting: int, streams: int = 0, **kw: bool) -> WorkerLoad:
    listed = [(f"{name}-r{i}", 100 * (i + 1)) for i in range(streams)]
    return WorkerLoad(name, running, waiting, 8, streams=listed, **kw)


@pytest.mark.parametrize(
    ("workers", "want"),
    [
        (
            [w("a", 8, 4, streams=3), w("b", 1, 0)],
            [("a-r0", "a", "b"), ("a-r1", "a", "b"), ("a-r2", "a", "b")],
        ),  # shortest contexts first, while a still has >= 2 queued
        ([w("a", 8, 4, streams=3), w("b", 7, 0)], [("a-r0", "a", "b")]),  # then b is full
        ([w("a", 8, 1, streams=3), w("b", 0, 0)], []),  # no queue building: leave it
        ([w("a", 4, 2, streams=3), w("b", 5, 0)], []),  # 0.75 vs 0.625: not lighter by the gap
        ([w("a", 8, 4, streams=3), w("b", 8, 0)], []),  # no free slot
        ([w("a", 8, 4, streams=3), w("b", 0, 0, draining=True)], []),  # draining: not a target
        ([w("a", 8, 4), w("b", 0, 0)], []),  # nothing streaming to move
        (
            [w("a", 8, 6, streams=5), w("b", 2, 0), w("c", 0, 0)],
            [("a-r0", "a", "c"), ("a-r1", "a", "c"), ("a-r2", "a", "b"), ("a-r3", "a", "c")],
        ),  # capped at 4 per round; each move goes to whoever is lightest then
    ],
)
def test_plan_moves(workers: list[WorkerLoad], want: list[tuple[str, str, str]]) -> None:
    before = [(x.running, x.waiting, list(x.streams)) for x in workers]
    assert plan_moves(workers, ON) == [Move(*m) for m in want]
    assert [(x.running, x.waiting, x.streams) for x in workers] == before  # inputs untouched


@given(
    st.lists(
        st.builds(
            WorkerLoad,
            worker_id=st.text("abcdef", min_size=1, max_size=3),
            running=st.integers(0, 8),
            waiting=st.integers(0, 8),
            max_num_seqs=st.just(8),
            draining=st.booleans(),
            streams=st.lists(st.tuples(st.uuids().map(str), st.integers(1, 5000)), max_size=6),
        ),
        max_size=6,
        unique_by=lambda x: x.worker_id,
    )
)
def test_moves_respect_the_rules(workers: list[WorkerLoad]) -> None:
    moves = plan_moves(workers, ON)
    assert len(moves) <= ON.max_moves_per_round
    assert len({m.request_id for m in moves}) == len(moves)  # each request moves at most once
    # Replay the moves on the counts: each was allowed when it was planned.
    state = {x.worker_id: [x.running, x.waiting] for x in workers}
    by_id = {x.worker_id: x for x in workers}
    for move in moves:
        source, target = by_id[move.source], by_id[move.target]
        assert move.source != move.target and not target.draining
        assert move.request_id in {r for r, _ in source.streams}
        (s_run, s_wait), (t_run, t_wait) = state[move.source], state[move.target]
        assert s_wait >= ON.min_waiting
        assert t_run + t_wait < target.max_num_seqs  # a free slot
        assert (t_run + t_wait) / 8 <= (s_run + s_wait) / 8 - ON.load_gap + 1e-9
        state[move.source][1] -= 1
        state[move.target][0] += 1


def _router(model_dir: Path) -> tuple[Router, FakeTransport]:
    router, transport = fake_router(model_dir, rebalance=ON)
    add_fake_worker(router, transport, "w0", token_delay=0.01)
    return router, transport


def _add(router: Router, transport: FakeTransport, name: str) -> None:
    add_fake_worker(router, transport, name, token_delay=0.01)


async def test_a_round_moves_streams_off_a_queueing_worker(tiny_model_dir: Path) -> None:
    router, transport = _router(tiny_model_dir)  # only w0 so far

    async def run(prompt: str) -> list[pb.TokenChunk]:
        request = pb.GenerateRequest(
            model="tiny", prompt=prompt, sampling=pb.SamplingParams(max_tokens=20)
        )
        route = await router.open(request)
        return [chunk async for chunk in router.chunks(route)]

    tasks = [asyncio.create_task(run(f"prompt {i}")) for i in range(3)]
    for _ in range(200):  # all three streaming on w0
        if len(router.moves.active) == 3:
            break
        await asyncio.sleep(0.01)
    assert len(transport.workers["w0:1"].submitted) == 3
    assert router.plan_rebalance() == []  # nowhere to go yet
    # w1 joins with room while w0 reports a queue: one round moves the streams to w1.
    _add(router, transport, "w1")
    router.registry.heartbeat("w0", pb.LoadSnapshot(running=8, waiting=3, max_num_seqs=8))
    router.registry.heartbeat("w1", pb.LoadSnapshot(running=0, waiting=0, max_num_seqs=8))
    moves = await router.rebalance()
    assert {m.source for m in moves} == {"w0"} and {m.target for m in moves} == {"w1"}
    assert len(moves) == 2  # while w0 still has >= 2 queued: 3 -> 2 -> 1
    results = await asyncio.wait_for(asyncio.gather(*tasks), timeout=10)
    for chunks in results:
        assert chunks[-1].finish_reason == "length"
        assert sum(len(c.token_ids) for c in chunks) == 20
        assert chunks[-1].usage.completion_tokens == 20
    assert len(transport.workers["w1:1"].submitted) == 2
    assert len(transport.workers["w0:1"].aborted) == 2
    assert router.metrics.rebalance_moves._value.get() == 2
    assert router.plan_rebalance() == []  # nothing left streaming
