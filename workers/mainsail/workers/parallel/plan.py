"""Pure sharding arithmetic: which heads, rows, vocabulary ids and experts each rank holds.

Why pure: every rank and the driver must compute the same layout from the same inputs
without talking, and the rules (what is refused, how KV heads replicate, how experts are
balanced) are the part worth unit-testing exhaustively. Nothing here touches torch or Ray.

Tensor parallelism (``tp`` ranks) splits attention by query head: rank ``r`` holds query
heads ``[r*h, (r+1)*h)`` with ``h = heads / tp`` (heads not divisible by ``tp`` are refused).
KV heads split the same way when there are at least ``tp`` of them (they must divide), and
are replicated otherwise: with ``tp = k * kv_heads`` each KV head lives on ``k`` consecutive
ranks, exactly the ranks whose query heads use it. The MLP's intermediate rows and the
vocabulary are split as evenly as possible (the vocabulary padded to ``tp * ceil(V / tp)``).

Expert parallelism places whole experts on ``ep`` ranks; `place_experts` balances measured
per-expert load (longest-processing-time greedy) under a per-rank expert cap, so memory and
work are both spread.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class ShardingError(ValueError):
    """A parallel degree the model cannot be split by (the message names both numbers)."""


@dataclass(frozen=True)
class ModelShape:
    """The sizes sharding depends on (a subset of `ModelConfig`)."""

    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    num_experts: int = 0


@dataclass(frozen=True)
class TensorLayout:
    """What tensor-parallel rank ``rank`` of ``size`` holds (ranges of global indices)."""

    rank: int
    size: int
    heads: range
    kv_heads: range
    intermediate: range
    vocab: range
    vocab_per_rank: int


def check_tensor_parallel(shape: ModelShape, tp: int) -> None:
    """Raise `ShardingError` unless ``tp`` ranks can split this model's attention."""
    if tp < 1:
        raise ShardingError(f"tensorParallel must be >= 1, got {tp}")
    if shape.num_heads % tp:
        raise ShardingError(
            f"tensorParallel {tp} does not divide num_attention_heads {shape.num_heads}: "
            "each rank must hold whole query heads"
        )
    kv = shape.num_kv_heads
    if kv >= tp and kv % tp:
        raise ShardingError(
            f"tensorParallel {tp} does not divide num_key_value_heads {kv} "
            "(nor is it a multiple of it, which would replicate KV heads)"
        )
    if kv < tp and tp % kv:
        raise ShardingError(
            f"tensorParallel {tp} is not a multiple of num_key_value_heads {kv}: KV heads "
            "can only be replicated evenly"
        )
    if shape.vocab_size < tp or shape.intermediate_size < tp:
        raise ShardingError(
            f"tensorParallel {tp} exceeds the vocabulary ({shape.vocab_size}) or the MLP "
            f"width ({shape.intermediate_size})"
        )


def even_split(total: int, parts: int, index: int) -> range:
    """Part ``index`` of ``total`` items split into ``parts`` contiguous, near-equal ranges."""
    base, extra = divmod(total, parts)
    start = index * base + min(index, extra)
    return range(start, start + base + (1 if index < extra else 0))


def kv_heads_of(shape: ModelShape, tp: int, rank: int) -> range:
    """The KV heads rank ``rank`` holds (one replicated head when ``tp`` exceeds them)."""
    kv = shape.num_kv_heads
    if kv >= tp:
        per = kv // tp
        return range(rank * per, (rank + 1) * per)
    head = rank // (tp // kv)
    return range(head, head + 1)


def tensor_layout(shape: ModelShape, tp: int, rank: int) -> TensorLayout:
    """Rank ``rank``'s share of the model (after `check_tensor_parallel`)."""
    check_tensor_parallel(shape, tp)
    if not 0 <= rank < tp:
        raise ShardingError(f"rank {rank} is outside [0, {tp})")
    h = shape.num_heads // tp
    per_vocab = -(-shape.vocab_size // tp)
    vocab_start = min(shape.vocab_size, rank * per_vocab)
    return TensorLayout(
        rank=rank,
        size=tp,
        heads=range(rank * h, (rank + 1) * h),
        kv_heads=kv_heads_of(shape, tp, rank),
        intermediate=even_split(shape.intermediate_size, tp, rank),
        vocab=range(vocab_start, min(shape.vocab_size, vocab_start + per_vocab)),
        vocab_per_rank=per_vocab,
    )


def kv_owner_ranks(shape: ModelShape, tp: int) -> list[int]:
    """For each KV head, the first rank holding it (where a gather of the cache reads it)."""
    owners: list[int] = []
    for rank in range(tp):
        for head in kv_heads_of(shape, tp, rank):
            if head == len(owners):
                owners.append(rank)
    return owners


def check_expert_parallel(shape: ModelShape, ep: int) -> None:
    """Raise `ShardingError` unless ``ep`` ranks can share this model's experts."""
    if ep < 1:
        raise ShardingError(f"expertParallel must be >= 1, got {ep}")
    if ep > 1 and shape.num_experts == 0:
        raise ShardingError(
            f"expertParallel {ep} needs a mixture-of-experts model; this one has no experts"
        )
    if shape.num_experts and ep > shape.num_experts:
        raise ShardingError(
            f"expertParallel {ep} exceeds num_local_experts {shape.num_experts}: every rank "
            "must hold at least one expert"
        )


Placement = tuple[tuple[int, ...], ...]
"""Experts held by each expert-parallel rank (rank ``r`` holds ``placement[r]``, sorted)."""


def place_experts(num_experts: int, ep: int, load: Sequence[float] | None = None) -> Placement:
    """Assign ``num_experts`` experts to ``ep`` ranks, balancing ``load`` (tokens routed to
    each expert); at most ``ceil(num_experts / ep)`` experts per rank. Without load (or with
    none measured) the experts are split into contiguous near-equal runs."""
    if not 1 <= ep <= num_experts:
        raise ShardingError(f"cannot place {num_experts} experts on {ep} ranks")
    if load is not None and len(load) != num_experts:
        raise ShardingError(f"{len(load)} load figures for {num_experts} experts")
    if load is None or not any(load):
        return tuple(tuple(even_split(num_experts, ep, r)) for r in range(ep))
    cap = -(-num_experts // ep)
    held: list[list[int]] = [[] for _ in range(ep)]
    totals = [0.0] * ep
    for expert in sorted(range(num_experts), key=lambda e: (-load[e], e)):
        rank = min(
            (r for r in range(ep) if len(held[r]) < cap), key=lambda r: (totals[r], len(held[r]), r)
        )
        held[rank].append(expert)
        totals[rank] += load[expert]
    return tuple(tuple(sorted(h)) for h in held)


def owner_of(placement: Placement) -> dict[int, int]:
    """Expert -> the rank holding it."""
    return {e: r for r, experts in enumerate(placement) for e in experts}


def rank_loads(placement: Placement, load: Sequence[float]) -> list[float]:
    """Total measured load per rank under ``placement``."""
    return [sum(load[e] for e in experts) for experts in placement]


def warm_spares_wanted(warm: int, ep_max: int | None, tp: int, degrees: Sequence[int]) -> int:
    """Warm spare rank processes a worker keeps started: at most ``warm``, and no more than
    a scale-up to ``ep_max`` could still use above the largest of ``degrees`` (the degree
    serving and, during a resize, the one being moved to). So ranks + joining ranks +
    spares never exceed ``max(tp, ep_max)``: the Ray CPUs a worker's pod offers (one per
    rank, the operator's ``num-cpus``), and a spare never keeps a joining rank from being
    placed. 0 without an ``ep_max`` (not elastic)."""
    if ep_max is None:
        return 0
    return max(0, min(warm, ep_max - max(tp, *degrees)))
