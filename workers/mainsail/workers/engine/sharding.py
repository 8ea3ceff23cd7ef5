"""An engine's sharded runner: how it is started, and the elastic expert-parallel hooks.

Why apart from `engine.py`: the engine loop drives any `StepRunner` the same way; what a
model split over rank actors adds is only its start (LoRA adapters checked against the whole
model without weights, the ranks' Ray resources) and the elastic-EP hooks (a resize asked for
while serving, switched between two steps). Both stay here so the loop reads as one loop.
`mainsail.workers.parallel` (Ray, and a circular import of this package's `model_runner`) is
imported only inside these functions, so an unsharded engine never imports it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from mainsail.workers.engine.config import EngineConfig
from mainsail.workers.models import AdapterSet, ModelConfig, model_class

if TYPE_CHECKING:
    from mainsail.workers.parallel import ShardedRunner


def start_sharded_runner(
    model_dir: Path, model_config: ModelConfig, config: EngineConfig, num_blocks: int
) -> tuple[ShardedRunner, AdapterSet | None]:
    """The rank actors for ``config`` (``tensor_parallel``, ``expert_parallel``, ...) and the
    adapter set that names the LoRA adapters and their slots (None without adapters).

    The adapters are checked against the whole model (no weights: meta tensors), so a bad one
    fails with the errors of an unsharded engine before any rank starts; the ranks hold the
    factors."""
    from mainsail.workers.parallel import ShardedRunner

    adapters = sorted((name, str(path)) for name, path in config.adapters.items())
    adapter_set: AdapterSet | None = None
    if adapters:
        with torch.device("meta"):
            whole = model_class(model_config.architecture)(model_config)
        adapter_set = AdapterSet(whole)
        for name, path in adapters:
            adapter_set.load(name, Path(path))

    runner = ShardedRunner(
        model_dir,
        model_config,
        tp=config.tensor_parallel,
        ep=config.expert_parallel,
        ep_max=config.expert_parallel_max,
        warm_spares=config.warm_expert_ranks,
        num_blocks=num_blocks,
        block_size=config.block_size,
        dtype=config.dtype,
        device=config.device,
        num_threads=config.num_threads or 1,
        resources=config.rank_resources,
        adapters=adapters,
    )
    return runner, adapter_set


def scale_experts(runner: ShardedRunner | None, expert_parallel: int) -> None:
    """Start moving ``runner`` to ``expert_parallel`` expert ranks while it serves (see
    `ShardedRunner.start_resize`); `ValueError` for an engine that runs no rank actors."""
    if runner is None:
        raise ValueError("scale_experts needs an engine started with expert_parallel set")
    runner.start_resize(expert_parallel)


def between_steps(runner: ShardedRunner | None) -> None:
    """The elastic-EP hook the engine calls before each step: a prepared resize switches
    here, between two steps (`ShardedRunner.switch_if_ready`); nothing for an unsharded one."""
    if runner is not None:
        runner.switch_if_ready()
