"""Balance is part of the score: with the default weights, cache affinity never piles a stream
onto one worker (the trap peers' cache-aware routers fall into), yet affinity holds at light load.

The stream is replayed through the real profile and the real approximate KV index, as the router
would: index lookup -> schedule -> record the dispatch -> bump the chosen worker's in-flight count.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from typing import Any

import pytest

from mainsail.router.kvindex import ApproximateIndex
from mainsail.router.scheduling import (
    RequestInfo,
    SchedulingContext,
    build_profile,
)
from mainsail.router.testing import idle_worker
from mainsail.spec.kv_cost import FetchCostModel
from mainsail.spec.routing_profile import RoutingProfile, ScorerWeight

pytestmark = pytest.mark.unit

BASE = idle_worker(max_num_seqs=64, kv_blocks_used=1000, kv_blocks_total=10_000, max_model_len=8192)
SHARED = tuple(range(1000, 1030))  # a 30-block system prompt every request shares


def request(i: int, unique_blocks: int) -> RequestInfo:
    blocks = SHARED + tuple(range(10_000 * (i + 1), 10_000 * (i + 1) + unique_blocks))
    return RequestInfo(f"r{i}", blocks, len(blocks) * 16, 64)


def replay(
    n_requests: int,
    n_workers: int,
    unique_blocks: int,
    finish_immediately: bool,
    seed: int,
    routing: RoutingProfile | None = None,
) -> Counter[str]:
    """Routes a stream; worker reports stay stale (running = waiting = 0) throughout."""
    profile = build_profile(routing or RoutingProfile(), random.Random(seed))
    index = ApproximateIndex(clock=lambda: 0.0)
    workers = {f"w{i}": dataclasses.replace(BASE, worker_id=f"w{i}") for i in range(n_workers)}
    counts: Counter[str] = Counter()
    for i in range(n_requests):
        req = request(i, unique_blocks)
        ctx = SchedulingContext(
            req, tuple(workers.values()), index.longest_prefix(req.block_hashes)
        )
        chosen = profile.schedule(ctx).worker_id
        assert chosen is not None
        counts[chosen] += 1
        index.record_dispatch(chosen, req.block_hashes)
        if not finish_immediately:
            w = workers[chosen]
            workers[chosen] = dataclasses.replace(w, outstanding=w.outstanding + 1)
    return counts


@pytest.mark.parametrize("unique_blocks", [0, 2, 10])  # full hit, 94 % and 75 % shared
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_burst_sharing_one_prefix_spreads(unique_blocks: int, seed: int) -> None:
    counts = replay(
        n_requests=64, n_workers=4, unique_blocks=unique_blocks, finish_immediately=False, seed=seed
    )
    fair = 64 / 4
    assert set(counts) == {"w0", "w1", "w2", "w3"}
    assert max(counts.values()) <= 1.5 * fair, counts


def test_without_load_scorers_the_stream_piles_up() -> None:
    """The trap the default weights avoid: cache affinity alone sends everything to one worker."""
    affinity_only = RoutingProfile(scorers=[ScorerWeight(name="kv-prefix", weight=1.0)])
    counts = replay(64, 4, unique_blocks=2, finish_immediately=False, seed=0, routing=affinity_only)
    assert list(counts.values()) == [64]


def test_affinity_holds_when_workers_are_idle() -> None:
    counts = replay(n_requests=40, n_workers=4, unique_blocks=2, finish_immediately=True, seed=0)
    assert len(counts) == 1  # the first worker keeps the shared prefix: every later request hits


@pytest.mark.parametrize(
    ("block", "holder", "goes_to_holder"),
    [
        # A 90 % hit of a short prompt (160 tokens) saves ~29 ms of prefill: worth it on an
        # idle holder, not against one more request in flight there (balance decides).
        (16, {"outstanding": 0}, True),
        (16, {"outstanding": 1}, False),
        (16, {"outstanding": 30}, False),
        # fresh reports: a full batch and a queue at the holder, light load elsewhere
        (16, {"running": 64, "waiting": 5, "outstanding": 69}, False),
        (16, {"running": 4, "waiting": 0, "outstanding": 4}, True),
        # A 90 % hit of a long prompt (2560 tokens) saves ~0.46 s: worth a small lead ...
        (256, {"outstanding": 1}, True),
        (256, {"running": 4, "waiting": 0, "outstanding": 4}, True),
        # ... not prefill queued at the holder that costs more than the hit saves.
        (256, {"outstanding": 30, "pending_prefill_tokens": 4096}, False),
        (256, {"running": 64, "waiting": 5, "outstanding": 69, "pending_prefill_tokens": 8192},
         False),
    ],
)  # fmt: skip
def test_a_loaded_holder_loses_a_90_percent_hit(
    block: int, holder: dict[str, Any], goes_to_holder: bool
) -> None:
    others: dict[str, Any] = (
        {"outstanding": 0} if "running" not in holder else {"running": 3, "outstanding": 3}
    )
    cost = FetchCostModel(block_bytes=0, block_size=block)  # 0.2 ms per prefilled token
    ws = (
        dataclasses.replace(BASE, worker_id="holder", kv_cost=cost, **holder),
        dataclasses.replace(BASE, worker_id="idle-1", kv_cost=cost, **others),
        dataclasses.replace(BASE, worker_id="idle-2", kv_cost=cost, **others),
    )
    req = RequestInfo("r", tuple(range(10)), 10 * block, 64)
    decision = build_profile(RoutingProfile(), random.Random(0)).schedule(
        SchedulingContext(req, ws, {"holder": 9})
    )
    best_other = max(decision.scores["idle-1"], decision.scores["idle-2"])
    assert abs(decision.scores["holder"] - best_other) > 0.05, decision.scores  # no tie
    assert (decision.worker_id == "holder") == goes_to_holder, decision.scores
