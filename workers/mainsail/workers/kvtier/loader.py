"""`BlockLoader`: probe the shared tier for a prompt's next blocks and fetch them, off-thread.

Why off the engine thread: a probe and a fetch are network round trips; the engine keeps
stepping its other requests meanwhile and only copies the fetched blocks into its cache
(it stays the only writer of the KV tensors). One loader thread serves the requests in
arrival order, so Redis sees at most one probe or fetch per worker at a time.

Per request: one pipelined existence probe of the hashes after the local prefix hits (one
round trip); if `decide_fetch` says the leading hits are worth it, one pipelined fetch; the
values land in one CPU staging tensor. When the policy fetches even a single block (`always`,
or `auto` once the measured costs say so), no number of hits can change the decision, so
the probe is skipped and the blocks fetched at once: one round trip instead of two. A block
written under another layout, a truncated value or a Redis error ends the fetched run there
(the rest is recomputed). The cost model learns the round trip and bandwidth here and the
prefill rate from the engine (`observe_prefill`); it is replaced, never mutated, under a
lock.

Values are received straight into a CPU staging tensor (`RedisKVTier.fetch_into`), at most
``max_fetch_bytes`` per load. Staging tensors are recycled (`recycle`, once the engine has
copied a result into its cache) up to that many bytes: writing into freshly mapped memory
runs at page-fault speed (about 1 GB/s measured), into reused memory at copy speed.
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
from mainsail.workers.kvtier.sharded import KVTier

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
    staging: torch.Tensor | None = None


class BlockLoader:
    """Probes and fetches blocks from ``tier`` under ``policy``, learning the costs."""

    def __init__(
        self,
        tier: KVTier,
        codec: BlockCodec,
        policy: FetchPolicy = "auto",
        cost: FetchCostModel | None = None,
        *,
        clock: Callable[[], float] = time.perf_counter,
        max_fetch_bytes: int = 256 << 20,
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
        self._staging: list[torch.Tensor] = []
        self.max_fetch_bytes = max_fetch_bytes
        self.max_fetch_blocks = max(1, max_fetch_bytes // codec.block_bytes())

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

    def recycle(self, result: LoadResult) -> None:
        """Take back ``result``'s staging memory (its ``blocks`` must not be used after)."""
        if result.staging is None:
            return
        kept = sum(b.numel() * b.element_size() for b in self._staging)
        size = result.staging.numel() * result.staging.element_size()
        with self._lock:
            if kept + size <= self.max_fetch_bytes:
                self._staging.append(result.staging)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._staging.clear()

    def _take_staging(self, blocks: int) -> torch.Tensor:
        with self._lock:
            for i, buf in enumerate(self._staging):
                if buf.shape[0] >= blocks:
                    return self._staging.pop(i)
        size = min(max(blocks, 8), self.max_fetch_blocks)
        return torch.empty((size, *self.codec.shape), dtype=self.codec.dtype)

    def _load(self, start: int, hashes: list[int]) -> LoadResult:
        t0 = self._clock()
        if decide_fetch(self.policy, self.cost, 1):
            return self._fetch_without_probe(start, hashes, t0)
        hits = min(self.tier.leading_hits(hashes), self.max_fetch_blocks)
        probed = self._clock() - t0
        with self._lock:
            self._cost = self._cost.observe_rtt(probed)
        if not decide_fetch(self.policy, self.cost, hits):
            return LoadResult(start, [], None, hits, self._clock() - t0)
        t1 = self._clock()
        staging = self._take_staging(hits)
        good = self.tier.fetch_into(hashes[:hits], self.codec.header, staging)
        if good is None:
            good = self._fetch_and_decode(hashes[:hits], staging)
        fetched = self._clock() - t1
        if good:
            with self._lock:
                self._cost = self._cost.observe_fetch(good, fetched)
        seconds = self._clock() - t0
        return LoadResult(start, hashes[:good], staging[:good], hits, seconds, staging)

    def _fetch_without_probe(self, start: int, hashes: list[int], t0: float) -> LoadResult:
        """When even one block pays for its fetch, any number does: GET without probing.

        A probe would only cost a round trip (and Redis a lookup per block) here. A missing
        block costs a tiny reply; blocks after a gap are received and dropped, bounded by
        ``max_fetch_bytes``. The round trip estimate is then left as the probes last saw it.
        """
        want = hashes[: self.max_fetch_blocks]
        staging = self._take_staging(len(want))
        good = self.tier.fetch_into(want, self.codec.header, staging)
        if good is None:
            good = self._fetch_and_decode(want, staging)
        seconds = self._clock() - t0
        if good:
            with self._lock:
                self._cost = self._cost.observe_fetch(good, seconds)
        return LoadResult(start, want[:good], staging[:good], good, seconds, staging)

    def _fetch_and_decode(self, hashes: list[int], staging: torch.Tensor) -> int:
        """The portable path: values as bytes, then decoded (one more copy)."""
        good = 0
        for value in self.tier.fetch(hashes):
            try:
                self.codec.decode_into(value, staging[good])
            except ValueError as exc:
                log.warning("KV tier block %016x unusable: %s", hashes[good], exc)
                if "checksum" in str(exc):
                    self.tier.stats.add(corrupt_blocks=1)
                break
            good += 1
        return good
