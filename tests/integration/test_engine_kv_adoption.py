"""Adopting a moved request with its tokens prepared in advance (`Engine.prepare_adoption`):
two real engines on the tiny checkpoint, no network.

Why: adoption runs while the source has paused the request, so it must not grow with the
context; the target checks and hashes the announced tokens before the KV arrives and hashes
only the blocks after them when the request lands. This checks that the shortcut is exact
(the block hashes are the chain over every token, the continuation is token-identical, the
adopted blocks serve a later prefix hit) and that an announcement that does not match falls
back to hashing everything.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mainsail.spec.kvhash import chain_hashes
from mainsail.workers.checkpoint.generator import ensure_checkpoint
from mainsail.workers.engine import (
    Engine,
    EngineConfig,
    EngineInputError,
    EngineRequest,
    SamplingParams,
)

pytestmark = pytest.mark.integration
CONFIG = EngineConfig(max_model_len=1024, num_threads=1, max_batched_tokens=256)
GREEDY = SamplingParams(temperature=0.0, max_tokens=60, ignore_eos=True)


def _prompt(n: int) -> list[int]:
    g = torch.Generator().manual_seed(n)
    return [int(t) for t in torch.randint(3, 500, (n,), generator=g)]


def _run(engine: Engine, rid: str, until: int | None = None) -> list[int]:
    """Step until ``rid`` has ``until`` output tokens (or finishes); its tokens so far."""
    tokens: list[int] = []
    while engine.has_unfinished():
        for out in engine.step():
            if out.request_id == rid:
                tokens += out.new_token_ids
        if until is not None and len(tokens) >= until:
            break
    return tokens


@pytest.fixture(scope="module")
def engines() -> tuple[Engine, Engine]:
    path = ensure_checkpoint("llama")
    return Engine(path, CONFIG), Engine(path, CONFIG)


@pytest.mark.parametrize("announce", ["prefix", "mismatch", "none"])
def test_adoption_with_prepared_tokens_is_exact(
    engines: tuple[Engine, Engine], announce: str
) -> None:
    source, target = engines
    prompt = _prompt(300 + ["prefix", "mismatch", "none"].index(announce))  # not cached yet
    rid = f"moved-{announce}"
    reference = _run_alone(source, prompt)
    source.add_request(EngineRequest(rid, prompt, GREEDY))
    before = _run(source, rid, until=20)
    stage = source.export_kv(rid, 0, final=False)  # the bulk, while it decodes
    before += _run(source, rid, until=5)
    final = source.export_kv(rid, stage.num_blocks, final=True)
    assert final.state is not None and final.num_blocks <= 2
    announced = EngineRequest(rid, [*prompt, *before[:18]], GREEDY)
    if announce == "mismatch":
        changed = [*prompt[:-1], prompt[-1] ^ 1, *before]  # not the request's tokens
        announced = dataclasses.replace(announced, prompt_token_ids=changed)
    prepared = target.prepare_adoption(announced) if announce != "none" else None
    assert stage.blocks is not None
    target.import_kv(rid, 0, stage.blocks)
    if final.blocks is not None:
        target.import_kv(rid, stage.num_blocks, final.blocks)
    target.adopt(final.state, prepared)
    source.end_export(rid, moved=True)
    _run(source, rid)
    seq = target._seqs[rid]  # the test inspects the adopted sequence
    assert seq.block_hashes == chain_hashes(seq.token_ids, CONFIG.block_size, CONFIG.hash_seed)
    after = _run(target, rid)
    assert [*before, *after] == reference
    # The adopted blocks are in the target's prefix cache under the right hashes.
    hits = target.metrics().prefix_hit_tokens
    target.add_request(EngineRequest(f"{rid}-again", prompt, GREEDY))
    _run(target, f"{rid}-again")
    assert target.metrics().prefix_hit_tokens - hits >= 256


def _run_alone(engine: Engine, prompt: list[int]) -> list[int]:
    rid = f"alone-{len(prompt)}-{engine.metrics().num_requests_finished}"
    engine.add_request(EngineRequest(rid, prompt, GREEDY))
    return _run(engine, rid)


def test_an_announcement_outside_the_vocabulary_is_refused(
    engines: tuple[Engine, Engine],
) -> None:
    _, target = engines
    with pytest.raises(EngineInputError, match="vocabulary"):
        target.prepare_adoption(EngineRequest("bad", [5, 6, 100_000], GREEDY))
