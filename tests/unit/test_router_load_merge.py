"""Load merging across router replicas, and drain state heard from worker heartbeats.

`fleet.load_merge` is pure: properties over every count. The registry part checks what a
heartbeat does to an entry: the other routers' share, and draining ordered by `drain_epoch`.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.router.fleet.load_merge import merged_in_flight, others_in_flight
from mainsail.router.fleet.registry import WorkerRegistry
from mainsail.router.routing.worker_views import WorkerViews
from mainsail.spec.kvhash import KVHashConfig

pytestmark = pytest.mark.unit
KV = KVHashConfig(block_size=16, hash_seed=7)
counts = st.integers(min_value=0, max_value=10_000)


def report(running: int, waiting: int, ours: int, router_id: str = "me") -> pb.LoadSnapshot:
    return pb.LoadSnapshot(
        running=running, waiting=waiting, router_in_flight=ours, router_id=router_id
    )


@given(counts, counts, counts, counts)
def test_merged_load_is_never_below_either_source(
    running: int, waiting: int, ours_reported: int, own_live: int
) -> None:
    others = others_in_flight(report(running, waiting, ours_reported), "me")
    merged = merged_in_flight(own_live, others)
    assert merged >= own_live and merged >= others
    assert others == max(0, running + waiting - ours_reported)


@given(counts, counts)
def test_a_worker_with_only_our_requests_adds_nothing(ours: int, own_live: int) -> None:
    """No double counting: our own requests in the report are not added to our live count."""
    split = ours // 2
    others = others_in_flight(report(split, ours - split, ours), "me")
    assert merged_in_flight(own_live, others) == own_live


@given(counts, counts, counts, st.sampled_from(["", "previous-process", "other-router"]))
def test_a_report_not_addressed_to_this_router_adds_nothing(
    running: int, waiting: int, ours: int, addressed: str
) -> None:
    assert others_in_flight(report(running, waiting, ours, addressed), "me") == 0
    assert others_in_flight(report(running, waiting, ours, "me"), "") == 0


@given(counts, counts, counts, counts)
def test_merged_load_grows_with_other_routers_requests(
    running: int, waiting: int, ours: int, extra: int
) -> None:
    base = others_in_flight(report(running, waiting, ours), "me")
    more = others_in_flight(report(running + extra, waiting, ours), "me")
    assert more >= base


def test_negative_counts_are_refused() -> None:
    with pytest.raises(ValueError, match="own=-1"):
        merged_in_flight(-1, 0)


def registry(router_id: str = "me") -> WorkerRegistry:
    reg = WorkerRegistry("m", KV, router_id=router_id)
    reg.register(
        pb.WorkerInfo(
            worker_id="w",
            address="w:1",
            model="m",
            max_num_seqs=8,
            max_model_len=512,
            kv_hash=pb.KVHashParams(block_size=16, hash_seed=7, algorithm=KV.algorithm),
        )
    )
    return reg


def test_scheduler_sees_own_live_count_plus_other_routers_share() -> None:
    reg = registry()
    entry = reg.get("w")
    assert entry is not None
    entry.outstanding = 3  # ours, live
    reg.heartbeat("w", report(running=6, waiting=2, ours=2))  # 6 of the 8 are others'
    assert entry.others == 6
    assert WorkerViews(reg).snapshot(entry).outstanding == 9


def test_drain_heard_from_a_heartbeat_reaches_listeners_once() -> None:
    reg = registry()
    heard: list[str] = []
    reg.subscribe(on_drain=lambda e: heard.append(e.worker_id))
    reg.heartbeat("w", pb.LoadSnapshot(draining=True, drain_epoch=1))
    reg.heartbeat("w", pb.LoadSnapshot(draining=True, drain_epoch=1))
    entry = reg.get("w")
    assert entry is not None and entry.draining and heard == ["w"]
    reg.heartbeat("w", pb.LoadSnapshot(draining=False, drain_epoch=2))  # undrained elsewhere
    assert not entry.draining


def test_a_heartbeat_older_than_our_own_drain_does_not_undo_it() -> None:
    reg = registry()
    reg.set_draining("w", True, epoch=1)  # the worker answered our Drain with epoch 1
    reg.heartbeat("w", pb.LoadSnapshot(draining=False, drain_epoch=0))  # sent before it
    entry = reg.get("w")
    assert entry is not None and entry.draining and entry.drain_epoch == 1
    reg.set_draining("w", False, epoch=0)  # a stale answer cannot undo a newer state
    assert entry.draining
