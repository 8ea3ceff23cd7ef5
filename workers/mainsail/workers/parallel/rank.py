"""`ShardRank`: one rank of a sharded worker (the body of one Ray actor, plain Python).

A rank below the tensor-parallel degree holds attention, its KV heads' paged cache and (for
MoE) its placed experts, and runs the ordinary `ModelRunner` over its shard: every rank gets
the same step inputs from the driver, builds the same attention metadata and meets its peers
in the collectives inside the forward. A rank at or above it is expert-only: per step it
receives the post-attention tokens of every MoE layer from rank 0, runs its experts and
joins the sum. Only rank 0 returns logits.

Elastic expert parallelism changes the process group under a live rank: `stage` loads the
experts a new placement gives this rank while it keeps serving (the actor runs it on a
second thread), and `switch` (called by the driver between two engine steps) leaves the old
process group, joins the new one and installs the staged experts. The KV cache is never
touched by either.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mainsail.workers.engine.model_runner import ModelRunner, StepInput
from mainsail.workers.models import resolve_dtype
from mainsail.workers.models.config import load_model_config
from mainsail.workers.models.lora import AdapterSet
from mainsail.workers.parallel.collectives import (
    LocalCollectives,
    TorchCollectives,
    World,
    open_rendezvous,
)
from mainsail.workers.parallel.layers import ExpertParallelMoE
from mainsail.workers.parallel.plan import Placement, tensor_layout
from mainsail.workers.parallel.shard_model import (
    SliceReader,
    build_expert_stack,
    build_shard,
    expert_tensors,
    load_experts,
    local_config,
    lora_part,
    model_shape,
    moe_layers,
)
from mainsail.workers.rank_actor import RankSetup

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Membership:
    """One process group: its rendezvous and the expert placement it runs with."""

    world: World
    placement: Placement

    def held(self, rank: int) -> tuple[int, ...]:
        return self.placement[rank] if rank < len(self.placement) else ()


class Switchboard:
    """The `Collectives` the layers hold; forwards to the process group joined last."""

    def __init__(self) -> None:
        self.active: TorchCollectives | LocalCollectives = LocalCollectives()

    @property
    def tp_size(self) -> int:
        return self.active.tp_size

    @property
    def expert_only_ranks(self) -> bool:
        return self.active.expert_only_ranks

    def tp_all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        return self.active.tp_all_reduce(t)

    def tp_gather_last(self, t: torch.Tensor) -> torch.Tensor:
        return self.active.tp_gather_last(t)

    def share_tokens(self, t: torch.Tensor) -> torch.Tensor:
        return self.active.share_tokens(t)

    def expert_all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        return self.active.expert_all_reduce(t)

    def leave(self) -> None:
        if isinstance(self.active, TorchCollectives):
            self.active.close()
        self.active = LocalCollectives()


class ShardRank:
    """One rank: builds its shard on `join`, then runs steps and serves its KV heads."""

    def __init__(self, setup: RankSetup, rank: int) -> None:
        torch.set_num_threads(setup.num_threads)
        self.setup, self.rank = setup, rank
        self.cfg = load_model_config(Path(setup.model_dir))
        self.device = torch.device(setup.device)
        self.dtype = resolve_dtype(setup.dtype, self.cfg, self.device)
        self.comm = Switchboard()
        self.runner: ModelRunner | None = None
        self.moes: list[ExpertParallelMoE] = []
        self._staged: list[dict[int, nn.Module]] | None = None
        self.membership: Membership | None = None
        self._rendezvous: Any = None

    def renumber(self, rank: int) -> None:
        """A warm spare taken for rank ``rank`` (before it joins any process group)."""
        if self.membership is not None:
            raise RuntimeError(f"rank {self.rank} has joined a process group: cannot renumber")
        self.rank = rank

    def open_rendezvous(self, host: str) -> tuple[str, int]:
        """Rank 0: serve the rendezvous of the next process group; its address."""
        self._rendezvous = open_rendezvous(host)
        return host, int(self._rendezvous.port)

    def _connect(self, world: World) -> TorchCollectives:
        store, self._rendezvous = self._rendezvous, None
        return TorchCollectives(world, self.rank, store)

    @property
    def attention(self) -> bool:
        """Whether this rank holds attention and KV heads (a tensor-parallel rank)."""
        return self.rank < self.setup.tp

    def join(self, membership: Membership) -> int:
        """Join the process group and build this rank's shard; returns its KV cache bytes."""
        self.comm.active = self._connect(membership.world)
        self.membership = membership
        held = membership.held(self.rank)
        setup = self.setup
        if self.attention:
            layout = tensor_layout(model_shape(self.cfg), setup.tp, self.rank)
            model = build_shard(
                Path(setup.model_dir), self.cfg, layout, held, self.comm, self.dtype, self.device
            )
            adapters = None
            if setup.adapters:
                adapters = AdapterSet(model, lora_part(self.cfg, layout))
                for name, path in setup.adapters:
                    adapters.load(name, Path(path))
            self.runner = ModelRunner(
                model, local_config(self.cfg, layout), setup.num_blocks, setup.block_size, adapters
            )
            self.moes = moe_layers(model)
            return self.runner.kv_cache_bytes
        self.moes = build_expert_stack(
            Path(setup.model_dir), self.cfg, held, self.comm, self.dtype, self.device
        )
        return 0

    def prepare_experts(self, placement: Placement) -> int:
        """A joining expert-only rank: build its MoE layers for ``placement`` before it joins
        the process group (`switch`); returns how many experts it holds."""
        held = placement[self.rank] if self.rank < len(placement) else ()
        self.moes = build_expert_stack(
            Path(self.setup.model_dir), self.cfg, held, self.comm, self.dtype, self.device
        )
        return len(held)

    @torch.inference_mode()
    def execute(self, inputs: Sequence[StepInput]) -> torch.Tensor | None:
        """Run one step; rank 0 returns the logits, the others None."""
        if self.runner is not None:
            logits = self.runner.execute(inputs)
            return logits if self.rank == 0 else None
        tokens = sum(len(item.token_ids) for item in inputs)
        for moe in self.moes:
            moe(torch.empty(tokens, self.cfg.hidden_size, dtype=self.dtype, device=self.device))
        return None

    def copy_blocks(self, copies: Sequence[tuple[int, int]]) -> None:
        if self.runner is not None:
            self.runner.copy_blocks(copies)

    def read_blocks(self, block_ids: Sequence[int]) -> torch.Tensor:
        """This rank's KV heads of the blocks (layout of `ModelRunner.read_blocks`)."""
        assert self.runner is not None, "an expert-only rank holds no KV cache"
        return self.runner.read_blocks(block_ids)

    def write_blocks(self, block_ids: Sequence[int], blocks: torch.Tensor) -> None:
        assert self.runner is not None, "an expert-only rank holds no KV cache"
        self.runner.write_blocks(block_ids, blocks)

    def expert_load(self) -> list[list[int]]:
        """Tokens routed to each expert so far, per MoE layer (the gate is replicated, so
        every rank counts every token)."""
        return [[int(n) for n in moe.load.tolist()] for moe in self.moes]

    def stage(self, placement: Placement) -> int:
        """Load (not install) the experts ``placement`` gives this rank that it lacks; returns
        how many expert-layers were loaded. Safe to run while steps execute."""
        held = placement[self.rank] if self.rank < len(placement) else ()
        reader = SliceReader(Path(self.setup.model_dir), self.dtype, self.device)
        staged: list[dict[int, nn.Module]] = []
        for layer, moe in enumerate(self.moes):
            missing = [e for e in held if str(e) not in moe.experts]
            tensors = expert_tensors(reader, layer, missing)
            staged.append(load_experts(moe, tensors, missing))
        self._staged = staged
        return sum(len(s) for s in staged)

    def switch(self, membership: Membership) -> None:
        """Leave the current process group, join ``membership``'s and hold its experts."""
        self.comm.leave()
        self.comm.active = self._connect(membership.world)
        held = membership.held(self.rank)
        staged = self._staged or [{} for _ in self.moes]
        for moe, new in zip(self.moes, staged, strict=True):
            for key in list(moe.experts):
                if int(key) not in held:
                    del moe.experts[key]
            for expert, module in new.items():
                moe.experts[str(expert)] = module
            if moe.held != tuple(sorted(held)):
                raise RuntimeError(
                    f"rank {self.rank}: experts {moe.held} after the switch, placement says "
                    f"{tuple(sorted(held))} (stage before switching)"
                )
        self._staged = None
        self.membership = membership

    def leave(self) -> None:
        """Leave the process group and drop this rank's experts (a rank a scale-down
        removes: it is killed, or kept as a warm spare that `renumber` and
        `prepare_experts` reuse). Only expert-only ranks leave: attention never moves."""
        if self.runner is not None:
            raise RuntimeError(f"rank {self.rank} holds attention and KV: it cannot leave")
        self.comm.leave()
        self.moes, self._staged, self.membership = [], None, None
