"""Baseline routing policies the simulator compares ours against (not product code).

Why they live here: they exist only to be beaten fairly, in the same run, on the same trace and
the same simulated workers. Each is the textbook version of what peers ship:

- ``random``: uniform choice.
- ``round-robin``: workers in turn.
- ``least-loaded``: fewest requests at the worker (waiting + running); ties broken at random.
- ``least-work``: a reference point rather than a peer: the worker minimising the prompt
  tokens it still has to prefill plus this request's uncached tokens there (read from the
  worker's own cache). It shows what a router could gain from a backlog-in-tokens signal.
- ``prefix-hash``: modelled on the cache-aware modes of peer routers: consistent hashing (a
  ring with virtual nodes) of the prompt's first ``prefix_tokens`` tokens picks a home worker;
  when the cluster is imbalanced (``max - min > abs_threshold`` and ``max > rel_threshold *
  min``, loads in requests) the request goes to the least-loaded worker instead. The defaults
  (64 requests, 1.5x) are those the peers ship with; product.md records their effect.
"""

from __future__ import annotations

import bisect
import hashlib
import random
from collections.abc import Sequence

from mainsail.sim.request import SimRequest
from mainsail.sim.worker import SimWorker


class RandomPolicy:
    """Uniformly random worker."""

    name = "random"

    def __init__(self, workers: Sequence[SimWorker], rng: random.Random) -> None:
        self._n = len(workers)
        self._rng = rng

    def route(self, req: SimRequest, now: float) -> int | None:
        return self._rng.randrange(self._n)


class RoundRobinPolicy:
    """Workers in turn."""

    name = "round-robin"

    def __init__(self, workers: Sequence[SimWorker], rng: random.Random) -> None:
        self._n = len(workers)
        self._next = 0

    def route(self, req: SimRequest, now: float) -> int | None:
        i = self._next
        self._next = (i + 1) % self._n
        return i


def _least_loaded(workers: Sequence[SimWorker], rng: random.Random) -> int:
    best: list[int] = []
    best_load = workers[0].load
    for w in workers:
        load = len(w.waiting) + len(w.running)
        if load < best_load:
            best, best_load = [w.index], load
        elif load == best_load:
            best.append(w.index)
    return best[0] if len(best) == 1 else rng.choice(best)


class LeastLoadedPolicy:
    """Fewest requests at the worker (waiting + running)."""

    name = "least-loaded"

    def __init__(self, workers: Sequence[SimWorker], rng: random.Random) -> None:
        self._workers = workers
        self._rng = rng

    def route(self, req: SimRequest, now: float) -> int | None:
        return _least_loaded(self._workers, self._rng)


class LeastWorkPolicy:
    """Fewest prompt tokens left to prefill, counting this request's cache misses."""

    name = "least-work"

    def __init__(self, workers: Sequence[SimWorker], rng: random.Random) -> None:
        self._workers = workers

    def route(self, req: SimRequest, now: float) -> int | None:
        bs = self._workers[0].block_size
        best, best_cost = 0, -1
        for w in self._workers:
            miss = req.input_tokens - bs * w.kv.prefix_hits(req.block_hashes)
            cost = w.backlog_tokens + miss
            if best_cost < 0 or cost < best_cost:
                best, best_cost = w.index, cost
        return best


class PrefixHashPolicy:
    """Consistent hashing on the prompt prefix, with a peer-style load-imbalance fallback."""

    name = "prefix-hash"

    def __init__(
        self,
        workers: Sequence[SimWorker],
        rng: random.Random,
        *,
        prefix_tokens: int = 1024,
        virtual_nodes: int = 64,
        abs_threshold: int = 64,
        rel_threshold: float = 1.5,
    ) -> None:
        if prefix_tokens < 1 or virtual_nodes < 1 or abs_threshold < 0 or rel_threshold < 1:
            raise ValueError("prefix-hash: invalid thresholds")
        self._workers = workers
        self._rng = rng
        self._abs = abs_threshold
        self._rel = rel_threshold
        self._prefix_tokens = prefix_tokens
        ring = sorted(
            (_h64(f"{w.worker_id}#{v}".encode()), w.index)
            for w in workers
            for v in range(virtual_nodes)
        )
        self._points = [p for p, _ in ring]
        self._owners = [i for _, i in ring]

    def route(self, req: SimRequest, now: float) -> int | None:
        loads = [len(w.waiting) + len(w.running) for w in self._workers]
        low, high = min(loads), max(loads)
        if high - low > self._abs and high > self._rel * low:
            return _least_loaded(self._workers, self._rng)
        if not req.block_hashes:
            return self._rng.randrange(len(self._workers))
        bs = self._workers[0].block_size
        k = min(len(req.block_hashes), max(1, self._prefix_tokens // bs))
        key = req.block_hashes[k - 1]  # chained: names the whole prefix up to block k
        pos = bisect.bisect(self._points, key) % len(self._points)
        return self._owners[pos]


def _h64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")
