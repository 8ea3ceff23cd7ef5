"""`BlockLoader`: probe the shared tier for a prompt's next blocks and fetch them, off-thread.

Why off the engine thread: a probe and a fetch are network round trips; the engine keeps
stepping its other requests meanwhile and only copies the fetched blocks into its cache
(it stays the only writer of the KV tensors). One loader thread serves the requests in
arrival order, so Redis sees at most one probe or fetch per worker at a time.

Per request: one pipelined existence probe of the hashes after the local prefix hits (one
round trip); if `decide_fetch` says the leading hits are worth it, one pipelined fetch; the
values are decoded into one CPU tensor. A block written under another layout, a truncated
value or a Redis error ends the fetched run there (the rest is recomputed). The cost model
learns the round trip and bandwidth here and the prefill rate from the engine
(`observe_prefill`); it is replaced, never mutated, under a lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch

from mainsail.workers.kvtier.codec import BlockCodec
from mainsail.workers.kvtier.cost import FetchCostModel, FetchPolicy, decide_fetch
from mainsail.workers.kvtier.redis_tier import RedisKVTier

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadResult:
    """Blocks fetched for hashes ``start .. start + len(hashes)`` of a sequence.

    ``blocks`` has shape ``(len(hashes), *codec.shape)`` on the CPU; ``hits`` is what the probe
    found (it can exceed ``len(hashes)`` when fetching was not worth it or a value was bad).
    """

    start: int
    hashes: list[int]
    blocks: torch.Tensor | None
    hits: int
    seconds: float


class BlockLoader:
    """Probes and fetches blocks from ``tier`` under ``policy``, learning the costs."""

    def __init__(
        self,
        tier: RedisKVTier,
        codec: BlockCodec,
        policy: FetchPolicy = "auto",
        cost: FetchCostModel | None = None,
        *,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if policy not in ("auto", "always", "never"):
            raise ValueError(f"fetch policy must be auto, always or never, got {policy!r}")
        self.tier = tier
        self.codec = codec
        self.policy: FetchPolicy = policy
        self._cost = cost or FetchCostModel(codec.block_bytes(), codec.block_size)
        self._lock = threading.Lock()
        self._clock = clock
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mainsail-kv-loader")

    @property
    def cost(self) -> FetchCostModel:
        with self._lock:
            return self._cost

    def worth_probing(self, blocks: int) -> bool:
        """Whether a prompt with ``blocks`` blocks beyond its local hits is worth a probe.

        Fetching more blocks amortises the round trip better, so if all ``blocks`` would not
        pay off, no leading part of them would either.
        """
        return self.tier.available() and decide_fetch(self.policy, self.cost, blocks)

    def observe_prefill(self, tokens: int, seconds: float) -> None:
        """Fold a measured prefill of ``tokens`` into the recompute estimate."""
        with self._lock:
            self._cost = self._cost.observe_prefill(tokens, seconds)

    def submit(self, start: int, block_hashes: Sequence[int]) -> Future[LoadResult]:
        """Probe (and maybe fetch) ``block_hashes``, the sequence's hashes from ``start``."""
        return self._pool.submit(self._load, start, list(block_hashes))

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _load(self, start: int, hashes: list[int]) -> LoadResult:
        t0 = self._clock()
        hits = self.tier.leading_hits(hashes)
        probed = self._clock() - t0
        with self._lock:
            self._cost = self._cost.observe_rtt(probed)
        if not decide_fetch(self.policy, self.cost, hits):
            return LoadResult(start, [], None, hits, self._clock() - t0)
        t1 = self._clock()
        values = self.tier.fetch(hashes[:hits])
        blocks = torch.empty((len(values), *self.codec.shape), dtype=self.codec.dtype)
        good = 0
        for value in values:
            try:
                self.codec.decode_into(value, blocks[good])
            except ValueError as exc:
                log.warning("KV tier block %016x unusable: %s", hashes[good], exc)
                break
            good += 1
        fetched = self._clock() - t1
        if good:
            with self._lock:
                self._cost = self._cost.observe_fetch(good, fetched)
        return LoadResult(start, hashes[:good], blocks[:good], hits, self._clock() - t0)
