"""At most one reconcile pass per deployment at a time; requests during a pass fold into one.

Why: a deployment is touched by its own handlers, its timer and the watch events of up to a
dozen children, many of them echoes of the operator's own writes. Running a pass per event
would race and waste API calls; dropping events would lose drift. Here a request that arrives
while a pass runs marks the key dirty, and exactly one more pass follows. Every caller returns
when a pass that began after its request has finished, and sees that pass's error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


@dataclass
class _Slot:
    done: asyncio.Future[None]
    dirty: bool = False
    waiters: int = field(default=0)


class Coalescer(Generic[K]):
    """Serializes and merges `run(key)` calls per key."""

    def __init__(self, run: Callable[[K], Awaitable[None]]) -> None:
        self._run = run
        self._slots: dict[K, _Slot] = {}

    def running(self) -> int:
        """Keys with a pass in progress (for metrics and tests)."""
        return len(self._slots)

    async def request(self, key: K) -> None:
        slot = self._slots.get(key)
        if slot is not None:
            slot.dirty = True
            slot.waiters += 1
            await asyncio.shield(slot.done)
            return
        slot = _Slot(done=asyncio.get_running_loop().create_future())
        self._slots[key] = slot
        try:
            while True:
                slot.dirty = False
                await self._run(key)
                if not slot.dirty:
                    break
        except BaseException as exc:
            if slot.waiters and not isinstance(exc, asyncio.CancelledError):
                slot.done.set_exception(exc)
                slot.done.exception()  # retrieved here; waiters re-raise it
            else:
                slot.done.cancel()
            raise
        else:
            slot.done.set_result(None)
        finally:
            del self._slots[key]
