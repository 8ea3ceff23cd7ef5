"""Automatic live migration: the pure move planner, and rounds over the real request path with
fake workers (real workers are moved by the same `Router.migrate` in tests/e2e)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.router.routing.rebalance import Move, WorkerLoad, plan_moves
from mainsail.router.routing.router import Router
from mainsail.router.testing import FakeTransport, add_fake_worker, fake_router
from mainsail.spec.rebalance import Rebalance

pytestmark = pytest.mark.unit
ON = Rebalance(enabled=True, min_waiting=2, load_gap=0.25, max_moves_per_round=4)


def w(name: str, running: int, waiting: int, streams: int = 0, **kw: Any) -> WorkerLoad:
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


_workers = st.lists(
    st.builds(
        WorkerLoad,
        worker_id=st.text("abcdef", min_size=1, max_size=3),
        running=st.integers(0, 8),
        waiting=st.integers(0, 8),
        max_num_seqs=st.just(8),
        draining=st.booleans(),
        streams=st.lists(st.tuples(st.uuids().map(str), st.integers(1, 5000)), max_size=6),
        kv_usage=st.floats(0, 1),
    ),
    max_size=6,
    unique_by=lambda x: x.worker_id,
)


@st.composite
def _with_ratios(draw: st.DrawFn) -> list[WorkerLoad]:
    """Workers whose streams have observed/target TPOT ratios for some of them."""
    workers = draw(_workers)
    for x in workers:
        for request_id, _ in x.streams:
            if draw(st.booleans()):
                x.tpot_ratio[request_id] = draw(st.floats(0, 3))
    return workers


@given(_with_ratios())
def test_moves_respect_the_rules(workers: list[WorkerLoad]) -> None:
    moves = plan_moves(workers, ON)
    assert plan_moves(workers, ON) == moves  # pure and deterministic
    assert len([m for m in moves if m.reason != "drain"]) <= ON.max_moves_per_round
    assert len({m.request_id for m in moves}) == len(moves)  # each request moves at most once
    by_id = {x.worker_id: x for x in workers}
    live = [x for x in workers if not x.draining]
    # A drain empties every draining worker whenever there is anywhere to go.
    drained = {m.request_id for m in moves if m.reason == "drain"}
    on_draining = {r for x in workers if x.draining for r, _ in x.streams}
    assert drained == (on_draining if live else set())
    # Replay the moves on the counts: each was allowed when it was planned.
    state = {x.worker_id: [x.running, x.waiting] for x in workers}
    for move in moves:
        source, target = by_id[move.source], by_id[move.target]
        assert move.source != move.target and not target.draining
        assert move.request_id in {r for r, _ in source.streams}
        (s_run, s_wait), (t_run, t_wait) = state[move.source], state[move.target]
        if move.reason == "drain":
            assert source.draining
        else:
            assert not source.draining
            assert t_run + t_wait < target.max_num_seqs  # a free slot
        if move.reason == "balance":
            assert s_wait >= ON.min_waiting
        if move.reason in ("balance", "slo"):
            assert (t_run + t_wait) / 8 <= (s_run + s_wait) / 8 - ON.load_gap + 1e-9
        if move.reason == "slo":
            assert source.tpot_ratio[move.request_id] >= ON.tpot_risk
        if move.reason == "defrag":
            assert s_wait >= 1 and source.kv_usage >= ON.kv_high_watermark
            assert target.kv_usage <= source.kv_usage - ON.load_gap + 1e-9
        if s_wait > 0:
            state[move.source][1] -= 1
        else:
            state[move.source][0] -= 1
        state[move.target][0] += 1


def test_a_drain_spreads_every_stream_over_the_workers_with_room() -> None:
    workers = [w("a", 3, 0, streams=3, draining=True), w("b", 6, 0), w("c", 5, 0)]
    moves = plan_moves(workers, ON)
    assert [(m.request_id, m.target, m.reason) for m in moves] == [
        ("a-r0", "c", "drain"),
        ("a-r1", "b", "drain"),  # c is as loaded as b now: the id breaks the tie
        ("a-r2", "c", "drain"),
    ]
    full = [w("a", 2, 0, streams=2, draining=True), w("b", 8, 0), w("c", 8, 1)]
    assert [m.target for m in plan_moves(full, ON)] == ["b", "b"]  # no room: it still goes
    assert plan_moves([w("a", 2, 0, streams=2, draining=True)], ON) == []  # nowhere to go


def test_slo_rescue_moves_the_most_endangered_stream_first() -> None:
    a = w("a", 8, 0, streams=3)
    a.tpot_ratio = {"a-r0": 0.5, "a-r1": 1.4, "a-r2": 0.95}
    moves = plan_moves([a, w("b", 1, 0)], ON)
    assert [(m.request_id, m.reason) for m in moves] == [("a-r1", "slo"), ("a-r2", "slo")]
    calm = w("a", 8, 0, streams=1)
    calm.tpot_ratio = {"a-r0": 2.0}
    assert plan_moves([calm, w("b", 7, 0)], ON) == []  # nowhere lighter by the gap


def test_defragmentation_moves_the_longest_stream_to_the_emptiest_cache() -> None:
    full = w("a", 4, 1, streams=3, kv_usage=0.95)
    moves = plan_moves([full, w("b", 4, 0, kv_usage=0.2), w("c", 2, 0, kv_usage=0.5)], ON)
    assert moves == [Move("a-r2", "a", "b", "defrag")]
    assert plan_moves([w("a", 4, 0, streams=3, kv_usage=0.95), w("b", 0, 0)], ON) == []


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
