"""The worker's `ScaleExperts` RPC and the expert figures in its heartbeats.

Why a module of its own: the elastic expert-parallel work is `expert_scaling.ExpertScaling`'s;
what the `Worker` service adds is only its mapping onto gRPC (a refusal to its status code, a
worker without expert-parallel ranks answering as such). `WorkerService` composes one
`ExpertScalingRPC` and delegates to it, as it does `migration_rpc.MigrationRPC`.
"""

from __future__ import annotations

from typing import NoReturn

import grpc

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.workers.expert_scaling import ExpertScaling, ScaleRefused

NOT_EXPERT_PARALLEL = "this worker does not run a mixture-of-experts model in expert-parallel ranks"


class ExpertScalingRPC:
    """`ScaleExperts` of one worker, and the degree and expert load its snapshots carry.

    ``experts`` is None on a worker that does not run a mixture-of-experts model in rank
    actors: `scale` answers FAILED_PRECONDITION and `fill` adds nothing.
    """

    def __init__(self, experts: ExpertScaling | None) -> None:
        self.experts = experts

    def fill(self, snapshot: pb.LoadSnapshot) -> None:
        """Add the degree and expert load to a heartbeat's snapshot (if this worker has any)."""
        if self.experts is not None:
            self.experts.fill(snapshot)

    async def scale(
        self, request: pb.ScaleExpertsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ScaleExpertsReply:
        """Start a change of the expert-parallel degree; returns at once, the heartbeats
        report the switch."""
        if self.experts is None:
            await _abort(context, grpc.StatusCode.FAILED_PRECONDITION, NOT_EXPERT_PARALLEL)
        try:
            current, target = await self.experts.scale(request.expert_parallel)
        except ScaleRefused as exc:
            await _abort(context, getattr(grpc.StatusCode, exc.code), str(exc))
        return pb.ScaleExpertsReply(expert_parallel=current, target=target)


async def _abort(
    context: grpc.aio.ServicerContext, code: grpc.StatusCode, details: str
) -> NoReturn:
    await context.abort(code, details)
    raise AssertionError("unreachable")  # context.abort raises
