"""The collectives a model shard calls, behind one seam (`Collectives`).

Why a seam: the model code only says *what* it needs (sum partial outputs over the
tensor-parallel ranks, gather vocabulary slices, hand tokens to the expert ranks and sum
their outputs); `TorchCollectives` does it with `torch.distributed` (gloo on CPU, NCCL when
the shard runs on CUDA). Two groups are involved: the tensor-parallel group (ranks
``[0, tp)``, which hold attention and the KV cache) and the expert world (all ranks, which
hold experts). Expert-only ranks exist when the expert-parallel degree exceeds ``tp``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

import torch
import torch.distributed as dist

JOIN_TIMEOUT = timedelta(seconds=120)


class Collectives(Protocol):
    """What sharded layers need from their peers (every call is collective)."""

    @property
    def tp_size(self) -> int: ...

    @property
    def expert_only_ranks(self) -> bool: ...

    def tp_all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        """Sum ``t`` over the tensor-parallel ranks (in place; returns it)."""
        ...

    def tp_gather_last(self, t: torch.Tensor) -> torch.Tensor:
        """Concatenate every tensor-parallel rank's ``t`` along the last dimension."""
        ...

    def share_tokens(self, t: torch.Tensor) -> torch.Tensor:
        """Rank 0's ``t`` on every rank of the expert world (in place; returns it)."""
        ...

    def expert_all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        """Sum ``t`` over every rank of the expert world (in place; returns it)."""
        ...


@dataclass(frozen=True)
class World:
    """One process group: its rendezvous, size, tensor-parallel degree and backend."""

    address: str
    port: int
    size: int
    tp: int
    backend: str = "gloo"


def open_rendezvous(host: str) -> Any:
    """A rendezvous store served by the calling rank (rank 0) on a port the OS picks and
    keeps bound: no window in which another process can take the port, as there would be
    with a port found free and then bound again."""
    return dist.TCPStore(host, 0, None, True, JOIN_TIMEOUT, wait_for_workers=False)  # type: ignore[attr-defined]


class TorchCollectives:
    """`Collectives` over `torch.distributed`; one instance per joined `World`.

    ``store``: rank 0 passes the rendezvous it serves (`open_rendezvous`); the other ranks
    connect to ``world.address:world.port``."""

    def __init__(self, world: World, rank: int, store: Any = None) -> None:
        self.world, self.rank = world, rank
        if store is None:
            store = dist.TCPStore(world.address, world.port, None, False, JOIN_TIMEOUT)  # type: ignore[attr-defined]
        self._store = store
        dist.init_process_group(
            world.backend, store=store, rank=rank, world_size=world.size, timeout=JOIN_TIMEOUT
        )
        # Every rank must take part in creating every group, members or not.
        self._tp: Any = dist.new_group(list(range(world.tp))) if world.size > world.tp else None

    @property
    def tp_size(self) -> int:
        return self.world.tp

    @property
    def expert_only_ranks(self) -> bool:
        return self.world.size > self.world.tp

    def tp_all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        if self.world.tp > 1:
            dist.all_reduce(t, group=self._tp)
        return t

    def tp_gather_last(self, t: torch.Tensor) -> torch.Tensor:
        if self.world.tp == 1:
            return t
        parts = [torch.empty_like(t) for _ in range(self.world.tp)]
        dist.all_gather(parts, t.contiguous(), group=self._tp)
        return torch.cat(parts, dim=-1)

    def share_tokens(self, t: torch.Tensor) -> torch.Tensor:
        if self.expert_only_ranks:
            dist.broadcast(t, src=0)
        return t

    def expert_all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        if self.world.size > 1:
            dist.all_reduce(t)
        return t

    def close(self) -> None:
        """Leave the process group (before joining another one)."""
        if dist.is_initialized():
            dist.destroy_process_group()


class LocalCollectives:
    """The collectives of a world of one rank: every call is the identity."""

    tp_size = 1
    expert_only_ranks = False

    def tp_all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def tp_gather_last(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def share_tokens(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def expert_all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        return t
