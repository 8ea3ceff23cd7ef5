"""The engine scheduler's order (issue 14): within a priority, earliest deadline first; every
decode before any prefill chunk (a Sarathi-style token budget), so a long prompt never
starves a decode; preemption never takes a sequence already in this step. Real block
allocator and KV cache manager; steps are advanced by hand (no model)."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mainsail.workers.engine.block_allocator import BlockAllocator
from mainsail.workers.engine.detokenizer import Detokenizer
from mainsail.workers.engine.kv_cache_manager import KVCacheManager
from mainsail.workers.engine.request import EngineRequest
from mainsail.workers.engine.scheduler import Scheduler
from mainsail.workers.engine.sequence import Sequence, Status

pytestmark = pytest.mark.unit
BLOCK = 4
_order = itertools.count()


def _seq(
    name: str,
    prompt: int,
    *,
    priority: int = 0,
    ttft: float | None = None,
    tpot: float | None = None,
    arrival: float = 0.0,
) -> Sequence:
    ids = [(hash(name) + i) % 97 + 3 for i in range(prompt)]
    request = EngineRequest(name, ids, priority=priority, ttft_budget_s=ttft, tpot_s=tpot)
    return Sequence(
        request=request,
        order=next(_order),
        block_size=BLOCK,
        hash_seed=0,
        generator=torch.Generator(),
        seed=0,
        detokenizer=Detokenizer(lambda ids: "", ids),
        arrival=arrival,
    )


def _scheduler(blocks: int = 256, seqs: int = 8, budget: int = 32) -> Scheduler:
    return Scheduler(KVCacheManager(BlockAllocator(blocks), BLOCK), seqs, budget)


def _run(scheduler: Scheduler, now: float) -> list[tuple[str, int]]:
    """One step: what it computes; computed tokens advance, finished prefills sample a token."""
    batch = scheduler.schedule()
    for seq, n in batch.items:
        seq.num_computed += n
        if seq.num_computed == seq.num_tokens:
            seq.append(7)
            seq.last_token_time = now
    return [(seq.request_id, n) for seq, n in batch.items]


def test_waiting_requests_are_admitted_earliest_deadline_first_within_a_priority() -> None:
    s = _scheduler(seqs=1, budget=64)
    for name, ttft in (("late", 5.0), ("none", None), ("soon", 1.0), ("mid", 2.0)):
        s.add(_seq(name, 8, ttft=ttft))
    s.add(_seq("urgent-but-low", 8, priority=-1, ttft=0.1))
    s.add(_seq("high", 8, priority=1, ttft=9.0))
    admitted = []
    for _ in range(6):
        step = _run(s, 0.0)
        admitted.append(step[0][0])
        s.remove(s.running[0])
    assert admitted == ["high", "soon", "mid", "late", "none", "urgent-but-low"]


def test_decodes_run_before_a_long_prefill_takes_the_budget() -> None:
    s = _scheduler(budget=32)
    decoding = [_seq(f"d{i}", 4, tpot=0.05) for i in range(3)]
    for seq in decoding:
        s.add(seq)
    _run(s, 0.0)  # their prompts; each now decodes
    assert all(seq.decoding for seq in decoding)
    long = _seq("long", 200, priority=5)  # higher priority, a prompt far over the budget
    s.add(long)
    step = _run(s, 0.01)
    assert ("long", 29) in step  # the prefill gets what the decodes leave
    for _ in range(5):
        sizes = dict(_run(s, 0.02))
        assert all(sizes.get(seq.request_id) == 1 for seq in decoding)  # never starved
        assert sizes["long"] == 29


def test_a_decode_due_sooner_goes_first_when_the_budget_is_short() -> None:
    s = _scheduler(budget=16)
    relaxed = _seq("relaxed", 4, tpot=1.0)
    tight = _seq("tight", 4, tpot=0.01)
    third = _seq("third", 4, tpot=0.5)
    for seq in (relaxed, tight, third):
        s.add(seq)
    _run(s, 0.0)
    assert all(seq.decoding for seq in (relaxed, tight, third))
    s.max_batched_tokens = 2
    assert [name for name, _ in _run(s, 0.0)] == ["tight", "third"]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(1, 40), st.integers(-1, 1), st.floats(0, 10) | st.none()),
        min_size=1,
        max_size=12,
    ),
    st.integers(6, 40),
    st.integers(4, 48),
)
def test_every_step_is_within_budget_and_never_preempts_what_it_scheduled(
    requests: list[tuple[int, int, float | None]], blocks: int, budget: int
) -> None:
    s = _scheduler(blocks=blocks, seqs=4, budget=budget)
    seqs = [_seq(f"r{i}", n, priority=p, ttft=t) for i, (n, p, t) in enumerate(requests)]
    for seq in seqs:
        if -(-(seq.num_tokens + 8) // BLOCK) <= blocks:  # the engine refuses what never fits
            s.add(seq)
    for step in range(200):
        if not s.has_work():
            break
        before = {id(seq) for seq in s.running}
        batch = s.schedule()
        assert batch.num_tokens <= budget
        names = [seq.request_id for seq, _ in batch.items]
        assert len(names) == len(set(names))
        assert not {id(v) for v in batch.preempted} & {id(seq) for seq, _ in batch.items}
        assert all(seq.status is Status.RUNNING for seq, _ in batch.items)
        kinds = [seq.decoding for seq, _ in batch.items if id(seq) in before]
        assert kinds == sorted(kinds, reverse=True)  # running: decodes, then prefill chunks
        for seq, n in batch.items:
            seq.num_computed += n
            if seq.num_computed == seq.num_tokens:
                if seq.num_tokens - seq.prompt_len >= 3:
                    s.remove(seq)
                    seq.status = Status.FINISHED
                else:
                    seq.append(7)
                    seq.last_token_time = float(step)
