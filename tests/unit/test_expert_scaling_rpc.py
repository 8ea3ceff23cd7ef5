"""`Worker.ScaleExperts` as the servicer maps it (`expert_scaling_rpc.ExpertScalingRPC`): a
worker without expert-parallel ranks refuses with FAILED_PRECONDITION and adds nothing to its
heartbeat; a refused change keeps its status code; an accepted one answers both degrees.

The scaling itself (`ExpertScaling` on a sharded tiny Mixtral) is covered end to end by
tests/integration/test_operator_expert_parallel.py; this is the fast tier of the mapping."""

from __future__ import annotations

import grpc
import pytest

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.workers.expert_scaling import ScaleRefused
from mainsail.workers.expert_scaling_rpc import ExpertScalingRPC


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code


class Context:
    """The part of `grpc.aio.ServicerContext` the RPC uses: abort raises, as gRPC's does."""

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)


class Scaling:
    """Stands in for `ExpertScaling` (degree 2; a change refused with ``refusal``)."""

    def __init__(self, refusal: ScaleRefused | None = None) -> None:
        self.refusal = refusal
        self.asked: list[int] = []

    async def scale(self, expert_parallel: int) -> tuple[int, int]:
        self.asked.append(expert_parallel)
        if self.refusal is not None:
            raise self.refusal
        return 2, expert_parallel

    def fill(self, snapshot: pb.LoadSnapshot) -> None:
        snapshot.expert_parallel = snapshot.expert_parallel_target = 2


def _rpc(scaling: Scaling | None) -> ExpertScalingRPC:
    return ExpertScalingRPC(scaling)  # type: ignore[arg-type]  # duck-typed ExpertScaling


async def test_a_worker_without_expert_ranks_refuses_and_reports_nothing() -> None:
    rpc = _rpc(None)
    with pytest.raises(Aborted) as refused:
        await rpc.scale(pb.ScaleExpertsRequest(expert_parallel=2), Context())  # type: ignore[arg-type]
    assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
    snapshot = pb.LoadSnapshot()
    rpc.fill(snapshot)
    assert snapshot.expert_parallel == 0 and not snapshot.HasField("kv_cost")


async def test_a_refused_change_keeps_its_status_code() -> None:
    scaling = Scaling(ScaleRefused("INVALID_ARGUMENT", "degree 3 does not divide 8 experts"))
    with pytest.raises(Aborted) as refused:
        await _rpc(scaling).scale(pb.ScaleExpertsRequest(expert_parallel=3), Context())  # type: ignore[arg-type]
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "does not divide" in str(refused.value)
    assert scaling.asked == [3]


async def test_an_accepted_change_answers_both_degrees_and_fills_heartbeats() -> None:
    rpc = _rpc(Scaling())
    reply = await rpc.scale(pb.ScaleExpertsRequest(expert_parallel=4), Context())  # type: ignore[arg-type]
    assert (reply.expert_parallel, reply.target) == (2, 4)
    snapshot = pb.LoadSnapshot()
    rpc.fill(snapshot)
    assert (snapshot.expert_parallel, snapshot.expert_parallel_target) == (2, 2)
