"""LoRA adapters on a tensor-parallel engine, against the same adapters in one process.

Each rank holds its part of every adapter, cut like the layer it adapts (column-parallel
``q/k/v/gate/up_proj``: the rank's rows of ``B``; row-parallel ``o_proj``/``down_proj``: its
columns of ``A``, the update summed over the ranks with the base output). Two adapters of
different ranks and the base model mixed in one batch, and one adapted prompt alone, at tp=2
must give the greedy tokens of tp=1 (top-5 log-probs within ``ATOL``: sharded sums run in
another order); the adapters must change the output (so the comparison cannot pass
vacuously), on the dense Llama (GQA) and on Mixtral (adapted attention, experts on the
ranks). A bad adapter is refused at start with the unsharded engine's error.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.ray_local import local_ray
from support.sharded import assert_matches, engine_config, random_prompt, run_to_end

from mainsail.workers.checkpoint import ensure_checkpoint, generate_adapter
from mainsail.workers.checkpoint_location import Arch
from mainsail.workers.engine import Engine
from mainsail.workers.models import CheckpointError

NEW_TOKENS = 6


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    with local_ray(num_cpus=2):
        yield


def _adapters(model: Path, root: Path) -> dict[str, Path]:
    return {
        "x": generate_adapter(model, root / "x", rank=8, seed=1),
        "y": generate_adapter(model, root / "y", rank=4, seed=2),
    }


@pytest.mark.parametrize("arch", ["llama", "mixtral"])
def test_lora_tp2_matches_one_process(
    ray_local: None, arch: Arch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    model = ensure_checkpoint(arch)
    adapters = _adapters(model, tmp_path_factory.mktemp(f"lora-tp-{arch}"))
    prompts = {f"p{n}": random_prompt(n, 7) for n in (3, 21, 40)}
    prompts["base"] = prompts["p21"]
    names = {"p3": "x", "p21": "y", "p40": "x", "base": None}
    alone = {"alone": prompts["p40"]}
    one = Engine(model, engine_config(adapters=adapters))
    batch_ref = run_to_end(one, prompts, NEW_TOKENS, adapters=names)
    alone_ref = run_to_end(one, alone, NEW_TOKENS, adapters={"alone": "y"})
    assert batch_ref["p21"][0] != batch_ref["base"][0], "adapter y changes nothing"
    sharded = Engine(
        model, engine_config(adapters=adapters, tensor_parallel=2, rank_resources={"CPU": 0.5})
    )
    try:
        assert sharded.sharded is not None and sharded.adapters == ["x", "y"]
        got = run_to_end(sharded, prompts, NEW_TOKENS, adapters=names)
        assert_matches(batch_ref, got, NEW_TOKENS)
        assert_matches(alone_ref, run_to_end(sharded, alone, NEW_TOKENS, adapters={"alone": "y"}))
    finally:
        sharded.close()


def test_bad_adapter_refused_before_ranks_start(ray_local: None, tmp_path: Path) -> None:
    llama = ensure_checkpoint("llama")
    (tmp_path / "broken").mkdir()
    with pytest.raises(CheckpointError, match="adapter 'broken'"):
        Engine(llama, engine_config(adapters={"broken": tmp_path / "broken"}, tensor_parallel=2))
