"""Tensor parallelism across Ray actors: sharded engines against the one-process engine.

Each sharded engine runs its ranks as Ray actors in one placement group, joined by gloo; the
tests compare greedy tokens (must be equal) and the top-5 log-probabilities at every
generated position (within ``ATOL``: the sharded attention and MLP sum partial products in a
different order, which moves float32 results by about 1e-6) for prompts run in one batch and
alone. Covered: GQA (4 query / 2 KV heads) at tp=2, MQA with tied embeddings at tp=2 (the one
KV head replicated on both ranks), and tp=3 on a 6-head / 3-KV-head variant (uneven MLP and
padded vocabulary slices). Heads not divisible by tp are refused before any actor starts. A
sharded engine reuses cached prefix blocks (same tokens, ``cached_tokens`` counted) and
reports them as KV events and in its snapshot, as an unsharded one does.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.ray_local import local_ray
from support.sharded import assert_matches, engine_config, random_prompt, run_to_end
from support.variants import llama_variant

from mainsail.workers.checkpoint import ensure_checkpoint
from mainsail.workers.engine import Engine, EngineRequest, SamplingParams
from mainsail.workers.parallel import ShardingError

NEW_TOKENS = 6
PROMPT_LENGTHS = (3, 21, 40)


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    """A Ray instance on loopback with room for three one-CPU ranks (logical CPUs)."""
    with local_ray(num_cpus=4):
        yield


def _check(model_dir: Path, tp: int, salt: int) -> None:
    prompts = {f"p{n}": random_prompt(n, salt) for n in PROMPT_LENGTHS}
    reference = Engine(model_dir, engine_config())
    batch_ref = run_to_end(reference, prompts, NEW_TOKENS)
    alone_ref = run_to_end(reference, {"alone": prompts["p21"]}, NEW_TOKENS)
    sharded = Engine(model_dir, engine_config(tensor_parallel=tp))
    try:
        assert sharded.sharded is not None and sharded.kv_cache_bytes > 0
        assert_matches(batch_ref, run_to_end(sharded, prompts, NEW_TOKENS), NEW_TOKENS)
        alone = run_to_end(sharded, {"alone": prompts["p21"]}, NEW_TOKENS)
        assert_matches(alone_ref, alone, NEW_TOKENS)
    finally:
        sharded.close()


@pytest.fixture(scope="module")
def llama() -> Path:
    return ensure_checkpoint("llama")


def test_gqa_tp2_matches_one_process(ray_local: None, llama: Path) -> None:
    _check(llama, 2, salt=1)


def test_mqa_tied_embeddings_tp2_replicates_the_kv_head(
    ray_local: None, llama: Path, tmp_path: Path
) -> None:
    mqa = llama_variant(llama, tmp_path / "mqa", heads=4, kv_heads=1, tie=True)
    _check(mqa, 2, salt=2)


def test_tp3_uneven_mlp_and_vocabulary(ray_local: None, llama: Path, tmp_path: Path) -> None:
    six = llama_variant(llama, tmp_path / "six", heads=6, kv_heads=3, tie=False)
    _check(six, 3, salt=3)


def test_heads_not_divisible_are_refused(llama: Path) -> None:
    with pytest.raises(ShardingError, match=r"tensorParallel 3 does not divide num_attention"):
        Engine(llama, engine_config(tensor_parallel=3))


def test_sharded_worker_reuses_prefixes_and_reports_kv_events(ray_local: None, llama: Path) -> None:
    prompt = random_prompt(40, 4)
    engine = Engine(llama, engine_config(tensor_parallel=2))
    try:
        first = run_to_end(engine, {"first": prompt}, NEW_TOKENS)["first"][0]
        events = engine.drain_kv_events()
        stored = [h for e in events if e.kind == "stored" for h in e.block_hashes]
        assert len(stored) >= 2
        params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True)
        engine.add_request(EngineRequest("again", prompt, params))
        tokens: list[int] = []
        cached = 0
        while engine.has_unfinished():
            for out in engine.step():
                tokens += out.new_token_ids
                cached = out.cached_tokens
        assert tokens == first
        assert cached >= 32  # the prompt's two full blocks came from the (sharded) cache
        assert set(stored) <= set(engine.kv_snapshot())
    finally:
        engine.close()
