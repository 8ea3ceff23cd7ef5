"""A warm spare's start-up runs at low priority on its own thread, and only there.

Linux scheduling priority is per thread: `lower_thread_priority` raises the nice value of
the thread that calls it and of nothing else, so a spare rank's build thread can sit at
+19 while the same process's actor threads (which later run its steps) stay where they were.
"""

from __future__ import annotations

import os
import sys
import threading

import pytest

from mainsail.workers.rank_actor import lower_thread_priority

pytestmark = [
    pytest.mark.unit,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux"),
]


def _nice(tid: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, tid)


def test_only_the_calling_thread_is_lowered_and_capped_at_19() -> None:
    caller = threading.get_native_id()
    before = _nice(caller)
    seen: list[int] = []

    def body() -> None:
        lower_thread_priority(19)
        lower_thread_priority(5)  # already at the floor: stays 19
        seen.append(_nice(threading.get_native_id()))

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert seen == [19]
    assert _nice(caller) == before


def test_zero_leaves_the_thread_alone() -> None:
    seen: list[int] = []

    def body() -> None:
        before = _nice(threading.get_native_id())
        lower_thread_priority(0)
        seen.append(_nice(threading.get_native_id()) - before)

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert seen == [0]
