"""Simulated worker and event loop: exact step timing, fast-forward, ordering, determinism."""

from __future__ import annotations

import pytest

from mainsail.sim.cost import GPUProfile, attn_pairs
from mainsail.sim.metrics import SLOTargets, summarise
from mainsail.sim.request import SimRequest
from mainsail.sim.simulation import SimSettings, run_policy
from mainsail.sim.traces import TraceRequest
from mainsail.sim.worker import SimWorker

pytestmark = pytest.mark.unit

P = GPUProfile(
    name="t",
    step_overhead_s=0.01,
    token_s=1e-4,
    attn_pair_s=1e-8,
    kv_read_s=1e-6,
    kv_capacity_tokens=100_000,
    max_num_seqs=8,
    max_batched_tokens=1024,
)


class Loop:
    """A minimal event queue for driving one worker by hand."""

    def __init__(self) -> None:
        self.events: list[tuple[float, int, int]] = []

    def schedule(self, at: float, worker: int, version: int) -> None:
        self.events.append((at, worker, version))

    def run(self, worker: SimWorker, until: float = 1e9) -> None:
        for _ in range(100_000):
            live = [e for e in self.events if e[0] <= until]
            if not live:
                return
            ev = min(live)
            self.events.remove(ev)
            worker.step_end(ev[0], ev[2])


def _worker(loop: Loop, done: list[SimRequest]) -> SimWorker:
    return SimWorker(0, P, 16, loop.schedule, done.append)


def test_idle_worker_ttft_and_decode_match_the_cost_model_exactly() -> None:
    loop, done = Loop(), list[SimRequest]()
    w = _worker(loop, done)
    req = SimRequest(0, 0.0, 1500, 5, list(range(93)))
    w.enqueue(req, 0.0)
    loop.run(w)
    prefill = P.step_time(1024, attn_pairs(1024, 0), 0, 0) + P.step_time(
        476, attn_pairs(476, 1024), 0, 0
    )
    assert req.first_token == pytest.approx(prefill)
    decode = sum(P.decode_step_time(1, 1500 + j) for j in range(4))
    assert req.finished == pytest.approx(prefill + decode)
    assert done == [req]
    assert req.tpot == pytest.approx(decode / 4)


def test_fast_forward_is_interrupted_at_the_end_of_the_step_in_flight() -> None:
    loop, done = Loop(), list[SimRequest]()
    w = _worker(loop, done)
    a = SimRequest(0, 0.0, 100, 200, list(range(6)))
    w.enqueue(a, 0.0)
    loop.run(w, until=0.05)  # prefill done; a decode stretch of 199 steps is planned
    assert len(loop.events) == 1
    stretch_end = loop.events[0][0]
    b = SimRequest(1, 0.5, 100, 2, list(range(1000, 1006)))
    w.enqueue(b, 0.5)
    assert min(loop.events)[0] < stretch_end  # cut short, at a step boundary >= 0.5
    loop.run(w)
    assert b.started >= 0.5
    assert b.started - 0.5 < P.decode_step_time(1, 400)
    assert a.finished > b.finished
    assert a.decode_left == 0 and b.decode_left == 0


def test_shared_prefix_is_reused_by_the_second_request() -> None:
    loop, done = Loop(), list[SimRequest]()
    w = _worker(loop, done)
    w.enqueue(SimRequest(0, 0.0, 320, 2, list(range(20))), 0.0)
    loop.run(w)
    second = SimRequest(1, 1.0, 330, 2, [*range(20), 99])
    w.enqueue(second, 1.0)
    loop.run(w)
    assert second.cached_tokens == 320


def _trace(n: int = 60) -> list[TraceRequest]:
    return [
        TraceRequest(0.05 * i, 700 + 37 * (i % 11), 5 + i % 7, (0, 1000 + i % 9, 5000 + i))
        for i in range(n)
    ]


def test_equal_time_events_resolve_step_ends_before_arrivals() -> None:
    # Every request arrives at t=0: the FIFO order of arrival must be the trace order.
    trace = [TraceRequest(0.0, 600, 3, (i,)) for i in range(6)]
    run = run_policy("round-robin", trace, P, SimSettings(workers=1, block_size=16))
    starts = [r.started for r in run.requests]
    assert starts == sorted(starts)
    assert [r.index for r in sorted(run.requests, key=lambda r: r.first_token)] == list(range(6))


@pytest.mark.parametrize("policy", ["ours", "random", "prefix-hash"])
def test_same_seed_same_report(policy: str) -> None:
    settings = SimSettings(workers=3, block_size=16, seed=11)
    a = summarise(run_policy(policy, _trace(), P, settings), SLOTargets())
    b = summarise(run_policy(policy, _trace(), P, settings), SLOTargets())
    assert (a.ttft, a.tpot, a.e2e, a.hit_rate) == (b.ttft, b.tpot, b.e2e, b.hit_rate)
    assert a.unfinished == 0


def test_the_router_sees_blocks_holding_tokens_not_the_output_reserved_at_admission() -> None:
    """The engine grows a sequence's blocks as tokens are computed; the simulator reserves the
    whole output at admission for its own accounting. The snapshot (read by the `ttft` scorer
    as decode context and by `kv-utilization`) must report what the engine would."""
    loop, done = Loop(), list[SimRequest]()
    w = _worker(loop, done)
    req = SimRequest(0, 0.0, 1500, 800, list(range(93)))  # 94 prompt blocks, 144 in all
    w.enqueue(req, 0.0)
    assert w.kv.used_blocks == 144  # reserved: prompt and output
    assert w.snapshot().kv_blocks_used == 64  # the first 1024-token chunk is what is held
    loop.run(w, until=0.2)  # prefill done, decoding
    held = -(-req.context // 16)
    assert 94 <= held < 144
    assert w.snapshot().kv_blocks_used == held
    loop.run(w)
    assert done == [req] and w.snapshot().kv_blocks_used == 0
