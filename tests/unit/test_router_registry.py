"""The worker registry: admission checks, heartbeats and expiry on an injected clock."""

from __future__ import annotations

import pytest

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.router.fleet.registry import WorkerEntry, WorkerRegistry
from mainsail.spec.kvhash import KVHashConfig

pytestmark = pytest.mark.unit
KV = KVHashConfig(block_size=16, hash_seed=7)


def info(worker_id: str, model: str = "m", block_size: int = 16, seed: int = 7) -> pb.WorkerInfo:
    return pb.WorkerInfo(
        worker_id=worker_id,
        address=f"{worker_id}:1",
        model=model,
        kv_hash=pb.KVHashParams(block_size=block_size, hash_seed=seed, algorithm=KV.algorithm),
    )


def test_silent_workers_expire_and_listeners_hear_it() -> None:
    now = [0.0]
    registry = WorkerRegistry("m", KV, expiry=5.0, clock=lambda: now[0])
    added: list[str] = []
    removed: list[str] = []
    registry.subscribe(lambda e: added.append(e.worker_id), lambda e: removed.append(e.worker_id))
    assert registry.register(info("a")).accepted
    assert registry.register(info("b")).accepted
    now[0] = 4.0
    assert registry.heartbeat("a", pb.LoadSnapshot(running=3))
    now[0] = 6.0
    assert registry.prune() == ["b"]
    assert [e.worker_id for e in registry.entries()] == ["a"]
    assert registry.get("a") is not None and registry.get("a").load.running == 3  # type: ignore[union-attr]
    assert added == ["a", "b"] and removed == ["b"]
    assert not registry.heartbeat("b", pb.LoadSnapshot())  # must register again


@pytest.mark.parametrize(
    ("worker", "reason"),
    [
        (info("x", model="other"), "model mismatch"),
        (info("x", block_size=32), "KV hash mismatch"),
        (info("x", seed=8), "KV hash mismatch"),
        (pb.WorkerInfo(worker_id="x", model="m"), "address are required"),
    ],
)
def test_mismatched_workers_are_refused_with_a_reason(worker: pb.WorkerInfo, reason: str) -> None:
    registry = WorkerRegistry("m", KV)
    verdict = registry.register(worker)
    assert not verdict.accepted and reason in verdict.detail
    assert len(registry) == 0 and registry.refusals


def test_reregistration_keeps_outstanding_and_fingerprint() -> None:
    registry = WorkerRegistry("m", KV)
    registry.register(info("a"))
    entry = registry.get("a")
    assert isinstance(entry, WorkerEntry)
    entry.outstanding = 4
    registry.register(info("a"))
    again = registry.get("a")
    assert again is not None and again.outstanding == 4
    assert again.fingerprint == KV.fingerprint()


def test_expiry_must_be_positive() -> None:
    with pytest.raises(ValueError, match="expiry"):
        WorkerRegistry("m", KV, expiry=0)
