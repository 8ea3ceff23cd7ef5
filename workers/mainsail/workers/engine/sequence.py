"""`Sequence`: the engine's mutable record of one request while it is scheduled.

Holds the tokens (prompt, then generated), how many of them have KV in the cache
(``num_computed``), the block table, the chained hashes of every full block (kept equal to
``chain_hashes(token_ids, block_size, seed, adapter)`` as tokens are appended), the request's
own random generator and its detokenizer. Preemption by recompute resets ``num_computed`` and
the block table but keeps tokens and hashes, so a resumed sequence often hits its own
evicted-but-still-cached blocks.
"""

from __future__ import annotations

import enum
import hashlib
import math
from dataclasses import dataclass, field

import torch

from mainsail.spec.kvhash import adapter_seed, block_hash, chain_hashes
from mainsail.workers.engine.detokenizer import Detokenizer
from mainsail.workers.engine.kv_cache_manager import BlockTable
from mainsail.workers.engine.request import EngineRequest, FinishReason


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    """One request inside the engine."""

    request: EngineRequest
    order: int
    block_size: int
    hash_seed: int
    generator: torch.Generator
    seed: int  # the request's seed, or one drawn for it: see `sampling_seed`
    detokenizer: Detokenizer
    arrival: float
    token_ids: list[int] = field(default_factory=list)
    block_hashes: list[int] = field(default_factory=list)
    num_computed: int = 0
    table: BlockTable = field(default_factory=BlockTable)
    status: Status = Status.WAITING
    cached_tokens: int | None = None
    scheduled_time: float | None = None  # the step that first ran it (end of its queueing)
    first_token_time: float | None = None
    last_token_time: float | None = None
    finish_reason: FinishReason | None = None

    def __post_init__(self) -> None:
        self.token_ids = list(self.request.prompt_token_ids)
        if not self.block_hashes:  # else given: a moved request's, hashed before it arrived
            self.block_hashes = chain_hashes(
                self.token_ids, self.block_size, self.hash_seed, self.request.kv_key
            )

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def prompt_len(self) -> int:
        return len(self.request.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def output_ids(self) -> list[int]:
        return self.token_ids[self.prompt_len :]

    def seed_next_sample(self) -> torch.Generator:
        """The generator, seeded for the next token's position (see `sampling_seed`)."""
        position = self.request.sampled_before + self.num_tokens - self.prompt_len
        self.generator.manual_seed(sampling_seed(self.seed, position))
        return self.generator

    @property
    def deadline(self) -> float:
        """When this sequence's next token is due, on the engine's clock (inf: no target):
        the first `ttft_budget_s` after arrival, each later one `tpot_s` after the last."""
        request = self.request
        if self.last_token_time is None:
            budget = request.ttft_budget_s
            return math.inf if budget is None else self.arrival + budget
        return math.inf if request.tpot_s is None else self.last_token_time + request.tpot_s

    @property
    def priority_key(self) -> tuple[int, float, int]:
        """Sort key: higher priority first, then earliest deadline, then first come first
        served."""
        return (-self.request.priority, self.deadline, self.order)

    @property
    def decoding(self) -> bool:
        """Whether its next step computes one token (a decode) rather than a prefill chunk."""
        return self.num_tokens - self.num_computed == 1

    def append(self, token_id: int) -> None:
        """Add a generated token, hashing the block it completes."""
        self.token_ids.append(token_id)
        if self.num_tokens % self.block_size == 0:
            parent = (
                self.block_hashes[-1]
                if self.block_hashes
                else adapter_seed(self.hash_seed, self.request.kv_key)
            )
            self.block_hashes.append(block_hash(parent, self.token_ids[-self.block_size :]))

    def reset_for_recompute(self) -> None:
        """Forget computed KV (blocks must already be freed): the sequence starts over."""
        self.num_computed = 0
        self.status = Status.WAITING


def sampling_seed(seed: int, position: int) -> int:
    """The seed of the generated token at ``position`` (0 = first) of a request seeded ``seed``.

    Why per position rather than one generator stream per request: a request moved to another
    worker (failure, drain, rebalancing, the decode half of a disaggregated request) continues
    there from its position, and draws exactly what it would have drawn where it started; with
    one stream the new worker would have to replay every earlier draw.
    """
    digest = hashlib.blake2b(b"%d:%d" % (seed, position), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1
