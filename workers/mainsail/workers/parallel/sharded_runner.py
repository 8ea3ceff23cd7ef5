"""`ShardedRunner`: the engine's model runner when the model is split over rank actors.

The engine (scheduler, KV block bookkeeping, sampling) stays in the worker process; this
runner has the interface of `ModelRunner` and forwards each step to every rank at once. The
ranks meet in `torch.distributed` collectives inside the forward, and rank 0 sends back the
logits. KV blocks read for the Redis tier or a migration are gathered from the ranks into
the unsharded layout (all KV heads, in order), and written back split by head, so blocks of
a sharded worker are interchangeable with those of an unsharded one.

Elastic expert parallelism (`start_resize` / `switch_if_ready`): a new placement is computed
from the expert load the ranks measured, joining ranks are started and load their experts,
staying ranks load the experts they gain, all while steps continue; the engine then calls
`switch_if_ready` between two steps, which moves every rank to the new process group in one
call, and the leaving ranks are released after it. The attention ranks, and so the KV cache,
never change.

Warm spares: starting a rank's process (Ray worker start, importing torch and the model
code: seconds of CPU) is most of a scale-up on a small machine. While ``ep_max`` exceeds the
current degree, up to ``warm_spares`` extra rank actors are kept started; they hold no
weights and no process group. A scale-up takes them (renumbered to the ranks that join)
before starting any new process, so it only loads experts into running processes. A
scale-down keeps the ranks it removes as spares (they leave the group and drop their
experts) instead of killing them and starting new ones. A spare that must be started
builds on a thread at the lowest priority (`SPARE_NICE`): nothing waits for it, so it
should only use CPU the serving ranks leave idle.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import torch

from mainsail.workers.engine.model_runner import StepInput
from mainsail.workers.models import DType, ModelConfig, resolve_dtype
from mainsail.workers.parallel.collectives import World
from mainsail.workers.parallel.plan import (
    Placement,
    ShardingError,
    check_expert_parallel,
    check_tensor_parallel,
    kv_heads_of,
    kv_owner_ranks,
    place_experts,
    warm_spares_wanted,
)
from mainsail.workers.parallel.rank import Membership
from mainsail.workers.parallel.ray_ranks import LivenessQuery, RankHandle, RayRanks
from mainsail.workers.parallel.recent_load import RecentLoad, observe
from mainsail.workers.parallel.shard_model import model_shape
from mainsail.workers.rank_actor import RankSetup

log = logging.getLogger(__name__)

# Added nice value of a warm spare's start-up thread (importing torch, building the empty
# shard): the most there is, since no request waits for a spare (a scale-up that takes one
# still starting waits for it; the operator's cooldown makes that rare).
SPARE_NICE = 19
# Spare ranks are numbered from here (past any rank in use) until a scale-up takes them.
SPARE_NUMBERS = 10_000
TAKE_POLL_S = 0.05


def default_expert_parallel(cfg: ModelConfig, tp: int) -> int:
    """Experts spread over the tensor-parallel ranks for MoE models; 1 for dense ones."""
    return min(tp, cfg.num_experts) if cfg.num_experts else 1


@dataclass
class Resize:
    """One elastic change of the expert-parallel degree, and when each phase ended."""

    target: int
    placement: Placement
    requested: float
    prepared: float | None = None
    switched: float | None = None
    joining: list[RankHandle] = field(default_factory=list)
    error: str | None = None


class ShardedRunner:
    """Runs steps on ``tp`` attention ranks plus expert-only ranks (``ep > tp``)."""

    def __init__(
        self,
        model_dir: Path,
        cfg: ModelConfig,
        *,
        tp: int,
        ep: int | None,
        ep_max: int | None = None,
        warm_spares: int = 0,
        num_blocks: int,
        block_size: int,
        dtype: DType = "auto",
        device: str = "cpu",
        num_threads: int = 1,
        resources: Mapping[str, float] | None = None,
        adapters: Sequence[tuple[str, str]] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        shape = model_shape(cfg)
        check_tensor_parallel(shape, tp)
        ep = default_expert_parallel(cfg, tp) if ep is None else ep
        check_expert_parallel(shape, ep)
        self.cfg, self.tp, self.ep = cfg, tp, ep
        self.block_size = block_size
        shard_device = torch.device(device)
        self.dtype = resolve_dtype(dtype, cfg, shard_device)
        self.device = torch.device("cpu")  # logits come back to the engine's process
        self._backend = "nccl" if shard_device.type == "cuda" else "gloo"
        if resources is None:
            resources = {"CPU": 1.0, "GPU": 1.0} if shard_device.type == "cuda" else {"CPU": 1.0}
        setup = RankSetup(
            str(model_dir), tp, num_blocks, block_size, dtype, device, num_threads, tuple(adapters)
        )
        self.ranks = RayRanks(setup, resources)
        self._kv_owners = kv_owner_ranks(shape, tp)
        self.placement = place_experts(cfg.num_experts, ep) if cfg.num_experts else ()
        self.handles: list[RankHandle] = []
        self._resize: Resize | None = None
        self._lock = threading.Lock()
        self.ep_max, self.warm_spares = ep_max, warm_spares
        self._spares: list[RankHandle] = []
        self._closed = False
        self._clock = clock
        self._load = RecentLoad()
        self._refilling = False
        self._spare_numbers = itertools.count(SPARE_NUMBERS)
        try:
            self.handles = self.ranks.spawn(range(tp))
            for rank in range(tp, max(tp, ep)):
                self.handles += self.ranks.spawn([rank])
            sizes = self.ranks.call(self.handles, "join", self._membership(self.placement))
        except BaseException:
            self.close()
            raise
        self.kv_cache_bytes = int(sum(sizes))
        self.refill_spares()

    @property
    def attention(self) -> list[RankHandle]:
        return self.handles[: self.tp]

    def _membership(self, placement: Placement, size: int | None = None) -> Membership:
        import ray

        address, port = ray.get(self.handles[0].actor.endpoint.remote())
        world = World(address, port, size or len(self.handles), self.tp, self._backend)
        return Membership(world, placement)

    def execute(self, inputs: Sequence[StepInput]) -> torch.Tensor:
        """Logits ``[rows wanting logits, vocab]`` (float32, on the CPU) from rank 0."""
        results = self.ranks.call(self.handles, "execute", list(inputs))
        logits: torch.Tensor = results[0]
        return logits.to(self.device)

    def copy_blocks(self, copies: Sequence[tuple[int, int]]) -> None:
        if copies:
            self.ranks.call(self.attention, "copy_blocks", list(copies))

    def read_blocks(self, block_ids: Sequence[int]) -> torch.Tensor:
        """Blocks with every KV head (layout of `ModelRunner.read_blocks`)."""
        parts = self.ranks.call(self.attention, "read_blocks", list(block_ids))
        heads = []
        for head, rank in enumerate(self._kv_owners):
            local = head - kv_heads_of(model_shape(self.cfg), self.tp, rank).start
            heads.append(parts[rank][..., local : local + 1, :])
        return torch.cat(heads, dim=-2)

    def write_blocks(self, block_ids: Sequence[int], blocks: torch.Tensor) -> None:
        shape = model_shape(self.cfg)
        slices = []
        for rank in range(self.tp):
            held = kv_heads_of(shape, self.tp, rank)
            slices.append(blocks[..., held.start : held.stop, :].contiguous())
        self.ranks.call(self.attention, "write_blocks", list(block_ids), each=slices)

    def ask_alive(self) -> LivenessQuery:
        """Send the serving ranks a liveness question (`RayRanks.ask_alive`). Spares and
        ranks still joining are not asked: they serve nothing, and a resize reports its own
        failure. Run on the engine thread like a step, so the ranks asked are the members."""
        return self.ranks.ask_alive(self.handles)

    def serves_with(self, handles: Sequence[RankHandle]) -> bool:
        """Whether ``handles`` are still exactly the serving ranks (no resize since)."""
        return len(handles) == len(self.handles) and all(
            a is b for a, b in zip(handles, self.handles, strict=True)
        )

    def lose(self, reason: str) -> NoReturn:
        """End the worker as a failed step does (`ShardLost`); engine thread."""
        self.ranks.lose(reason)

    # Elastic expert parallelism -------------------------------------------------------

    def expert_load(self) -> list[float]:
        """Recent tokens routed to each expert, summed over the MoE layers: rank 0's counters
        read now, decayed with a half-life of `recent_load.HALF_LIFE_S` (placement and the
        autoscaler follow what the model is asked now, not since start)."""
        per_layer = self.ranks.call(self.handles[:1], "expert_load")[0]
        counts = [float(sum(col)) for col in zip(*per_layer, strict=True)] if per_layer else []
        self._load = observe(self._load, counts, self._clock())
        return list(self._load.recent)

    def start_resize(self, ep: int) -> Resize:
        """Begin moving to ``ep`` expert ranks: placement from measured load, joining ranks
        started and loaded on a background thread. `switch_if_ready` completes it."""
        if not self.cfg.num_experts:
            raise ShardingError("expert parallelism needs a mixture-of-experts model")
        check_expert_parallel(model_shape(self.cfg), ep)
        with self._lock:
            if self._resize is not None and self._resize.switched is None:
                raise ShardingError(
                    f"a change to expertParallel {self._resize.target} is still in progress"
                )
            placement = place_experts(self.cfg.num_experts, ep, self.expert_load())
            resize = Resize(ep, placement, time.monotonic())
            self._resize = resize
        threading.Thread(target=self._prepare, args=(resize,), daemon=True).start()
        return resize

    def spares_wanted(self) -> int:
        """Warm spare ranks to keep (`plan.warm_spares_wanted`: at most ``warm_spares``, and
        no more than a scale-up to ``ep_max`` could still add above the degree serving or
        being moved to)."""
        if not self.cfg.num_experts:
            return 0
        resize = self._resize
        degrees = [self.ep]
        if resize is not None and resize.switched is None and resize.error is None:
            degrees.append(resize.target)
        return warm_spares_wanted(self.warm_spares, self.ep_max, self.tp, degrees)

    @property
    def spares(self) -> list[RankHandle]:
        """The warm spare ranks started now (not members of the process group)."""
        with self._lock:
            return list(self._spares)

    def refill_spares(self) -> None:
        """Release spares beyond `spares_wanted`; start the missing ones on a background
        thread (one at a time: never blocks serving)."""
        with self._lock:
            extra = self._spares[self.spares_wanted() :]
            del self._spares[len(self._spares) - len(extra) :]
            start = not self._refilling and self.spares_wanted() > len(self._spares)
            self._refilling = self._refilling or start
        if extra:
            self.ranks.release(extra)
        if start:
            threading.Thread(target=self._start_spares, daemon=True).start()

    def _start_spares(self) -> None:
        try:
            self._add_spares()
        except Exception as exc:
            log.warning("could not start a warm spare rank: %s", exc)
        finally:
            self._refilling = False

    def _add_spares(self) -> None:
        while True:
            with self._lock:
                if self._closed or len(self._spares) >= self.spares_wanted():
                    return
            # Numbered past every rank in use; renumbered when a scale-up takes it.
            spare = self.ranks.spawn([next(self._spare_numbers)], build_nice=SPARE_NICE)
            with self._lock:
                if self._closed:
                    self.ranks.release(spare)
                    return
                self._spares += spare

    def drop_dead_spares(self, timeout: float) -> list[int]:
        """Ask the warm spares whether they live, release the ones Ray reports dead and
        start replacements; the numbers of those dropped. Any thread: spares take part in
        no step. Why: a dead spare is otherwise found only when a scale-up takes it."""
        spares = self.spares
        if not spares:
            return []
        heard = self.ranks.ask_alive(spares).hear(timeout)
        dead = {rank for rank, _ in heard.dead}
        with self._lock:  # a spare taken by a scale-up meanwhile is no longer ours to drop
            gone = [h for h in self._spares if h.rank in dead and any(h is s for s in spares)]
            self._spares = [h for h in self._spares if all(h is not g for g in gone)]
        if gone:
            log.warning("warm spare ranks %s are dead; starting new ones", [h.rank for h in gone])
            self.ranks.release(gone)
            self.refill_spares()
        return [h.rank for h in gone]

    def _take_spare(self) -> RankHandle | None:
        """A warm spare, waiting for one being started (its bundle would otherwise keep the
        rank started instead from being placed); None if there is none."""
        while True:
            with self._lock:
                if self._spares:
                    return self._spares.pop(0)
                if not self._refilling or self._closed:
                    return None
            time.sleep(TAKE_POLL_S)

    def _prepare(self, resize: Resize) -> None:
        try:
            size = max(self.tp, resize.target)
            joining: list[RankHandle] = []
            for rank in range(len(self.handles), size):
                spare = self._take_spare()
                if spare is not None and self.ranks.renumber(spare, rank):
                    joining.append(spare)
                else:
                    joining += self.ranks.spawn([rank], build_nice=self.ranks.prepare_nice)
            staying = self.handles[:size]
            if joining:
                self.ranks.call(joining, "prepare_experts", resize.placement)
            self.ranks.call(staying, "stage", resize.placement)
            resize.joining = joining
            resize.prepared = time.monotonic()
        except Exception as exc:
            resize.error = f"{type(exc).__name__}: {exc}"
            log.exception("preparing expertParallel %d failed", resize.target)

    def switch_if_ready(self) -> Resize | None:
        """Between engine steps: if a prepared resize is waiting, switch every rank to the
        new process group and placement, release leaving ranks; returns the resize done."""
        resize = self._resize
        if resize is None or resize.switched is not None:
            return None
        if resize.error is not None:
            self._resize = None
            self.ranks.release(resize.joining)
            log.error("expertParallel %d abandoned: %s", resize.target, resize.error)
            self.refill_spares()
            return None
        if resize.prepared is None:
            return None
        size = max(self.tp, resize.target)
        members = (self.handles + resize.joining)[:size]
        leaving = self.handles[size:]
        self.handles = members
        self.ranks.call(members, "switch", self._membership(resize.placement, size))
        self.ep, self.placement = resize.target, resize.placement
        resize.switched = time.monotonic()
        if leaving:
            self.ranks.call(leaving, "leave")
            self._keep_as_spares(leaving)
        self.refill_spares()
        log.info(
            "expertParallel now %d (placement %s), %.2f s after the request",
            self.ep,
            self.placement,
            resize.switched - resize.requested,
        )
        return resize

    def _keep_as_spares(self, leaving: Sequence[RankHandle]) -> None:
        """Ranks a scale-down removed (out of the group, experts dropped): keep as many as
        warm spares as are wanted, release the others."""
        with self._lock:
            room = self.spares_wanted() - len(self._spares) - int(self._refilling)
            keep = list(leaving[: max(0, room)])
        self.ranks.release(leaving[len(keep) :])
        kept = [h for h in keep if self.ranks.renumber(h, next(self._spare_numbers))]
        with self._lock:
            self._spares += kept

    @property
    def resizing(self) -> Resize | None:
        """The current or last resize."""
        return self._resize

    def close(self) -> None:
        """Release every rank (and any rank started for an unfinished resize)."""
        with self._lock:
            self._closed = True
            spares, self._spares = self._spares, []
        handles, self.handles = self.handles, []
        joining = self._resize.joining if self._resize and self._resize.switched is None else []
        self.ranks.release(handles + joining + spares)
