"""The body of one rank's Ray actor, kept light to import so that a rank joining a serving
worker can do its heavy start-up on a thread of its own, optionally at lower priority.

Why a module of its own (outside `mainsail.workers.parallel`, whose modules import torch):
Ray imports an actor's class, and unpickles its constructor's arguments, on the new
process's main thread. Here both need only the standard library, so importing torch and
the model code and building the shard happen on a **build thread** for a rank started while
the worker serves (elastic expert parallelism) or kept as a warm spare, and loading the
experts of a new placement (`prepare_experts`, `stage`) on a **preparation thread**. Steps
(`execute`) and the switch run on Ray's actor threads. Each of the two threads can run at a
raised nice value (Linux scheduling priority is per thread, so this needs no privilege and
leaves the other threads alone): a warm spare builds at nice +19 (nothing waits for it);
preparation defaults to 0 because on the two-core test machine nice 10 made scale-up
slower without measurably helping serving (docs/benchmarks.md).
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mainsail.workers.models import DType
    from mainsail.workers.parallel.rank import ShardRank

log = logging.getLogger(__name__)

# Methods of `ShardRank` that prepare a new placement while the old one serves: they run on
# the preparation thread, the others on Ray's actor threads.
PREPARATION = frozenset({"prepare_experts", "stage"})


@dataclass(frozen=True)
class RankSetup:
    """What every rank of one worker shares: checkpoint, dtype/device, KV cache geometry."""

    model_dir: str
    tp: int
    num_blocks: int
    block_size: int
    dtype: DType = "auto"
    device: str = "cpu"
    num_threads: int = 1
    adapters: tuple[tuple[str, str], ...] = ()
    """LoRA adapters (name, directory), in the engine's slot order (slot = index + 1)."""


def lower_thread_priority(nice: int) -> None:
    """Raise the calling thread's nice value by ``nice`` (Linux: per thread; elsewhere the
    call may affect the process, or be unavailable, and is then skipped)."""
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except OSError as exc:
        log.warning("could not lower the preparation thread's priority: %s", exc)


class RankActor:
    """Ray actor body around `ShardRank` (threaded: preparation runs beside `execute`).

    Preparation calls (`PREPARATION`) run on one thread whose nice value is raised by
    ``prepare_nice``. With ``build_nice`` set (a rank started while the worker serves, or a
    warm spare) the shard is built on a thread of its own whose nice value is raised by
    that much, and calls wait for it; otherwise it is built before the constructor returns.
    Its own thread, not the preparation one: a spare builds at the lowest priority, and the
    experts a scale-up then loads into it must not inherit that.
    """

    def __init__(
        self, setup: RankSetup, rank: int, prepare_nice: int = 0, build_nice: int | None = None
    ) -> None:
        logging.basicConfig(level=logging.INFO, format=f"%(asctime)s rank{rank} %(message)s")
        self._prepare = ThreadPoolExecutor(
            max_workers=1, initializer=lower_thread_priority, initargs=(prepare_nice,)
        )
        self._shard: Future[ShardRank]
        if build_nice is None:
            self._shard = Future()
            self._shard.set_result(_build(setup, rank))
        else:
            builder = ThreadPoolExecutor(
                max_workers=1, initializer=lower_thread_priority, initargs=(build_nice,)
            )
            self._shard = builder.submit(_build, setup, rank)
            builder.shutdown(wait=False)

    def endpoint(self) -> tuple[str, int]:
        """Rank 0: open the rendezvous of the next process group; its address."""
        import ray

        host: str = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
        address: tuple[str, int] = self._shard.result().open_rendezvous(host)
        return address

    def pid(self) -> int:
        return os.getpid()

    def ready(self) -> bool:
        """Whether the shard is built (a joining rank or spare has finished importing);
        answers at once, unlike any other call, which waits for it."""
        return self._shard.done()

    def call(self, method: str, *args: Any) -> Any:
        shard = self._shard.result()
        work = getattr(shard, method)
        if method in PREPARATION:
            return self._prepare.submit(work, *args).result()
        return work(*args)


def _build(setup: RankSetup, rank: int) -> ShardRank:
    from mainsail.workers.parallel.rank import ShardRank

    return ShardRank(setup, rank)
