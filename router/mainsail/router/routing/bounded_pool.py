"""CPU-heavy request preparation off the event loop, with a bounded queue.

Why: tokenizing a multi-megabyte prompt (or rendering a long chat) takes seconds of CPU. On
the event loop that stalls every stream and `/health`; on an unbounded pool a flood of such
requests queues without limit. So large preparations run on a few threads (the tokenizer
releases the GIL for its Rust work), and once `max_waiting` are queued or running the next
one is refused with 429 at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from mainsail.router.errors import overloaded

P = ParamSpec("P")
T = TypeVar("T")


class BoundedPool:
    """Runs functions on ``threads`` threads; at most ``max_waiting`` at once (else 429)."""

    def __init__(self, threads: int, max_waiting: int, *, name: str) -> None:
        if threads < 1 or max_waiting < threads:
            raise ValueError(f"need 1 <= threads <= max_waiting, got {threads}, {max_waiting}")
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix=name)
        self.max_waiting = max_waiting
        self.busy = 0

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args, **kwargs)`` on a pool thread; 429 when the pool is full."""
        if self.busy >= self.max_waiting:
            raise overloaded(
                f"Too many large prompts are being prepared ({self.max_waiting}); retry later."
            )
        loop = asyncio.get_running_loop()
        self.busy += 1
        work = self._executor.submit(lambda: fn(*args, **kwargs))
        # Counted until the thread is done, even when the caller goes away first.
        work.add_done_callback(lambda _: loop.call_soon_threadsafe(self._done))
        return await asyncio.wrap_future(work, loop=loop)

    def _done(self) -> None:
        self.busy -= 1

    def close(self) -> None:
        """Stop the threads (queued work is dropped)."""
        self._executor.shutdown(wait=False, cancel_futures=True)
