"""End to end: a sharded worker that loses one rank fails over like a dead worker (issue 13).

`mainsail up` with two tensor-parallel workers (tp=2 on the tiny Llama: each worker drives two
rank actors on the stack's local Ray). While a greedy stream is served by one of them, one of
*its* rank actors is SIGKILLed (never the worker itself). The worker's next step finds the
rank gone (`ShardLost`, an `EngineFatalError`), the worker actor ends its process (the cluster
path: `ray_actor._die`), the router sees a dead worker and continues the stream on the other
worker by recompute (the dead worker's KV died with it), and the client gets exactly the tokens
of an undisturbed run. The supervisor then starts a replacement with fresh ranks, which
registers again and serves the same tokens.

How a rank is found: rank actors are processes descending from this stack's `mainsail up`
whose title is ``ray::RankActor``; a worker drives its ranks over Ray's direct actor calls, so
the ranks of one worker are those listening on a port the worker process is connected to.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import psutil
import pytest
from support.stack import admin, running_stack, worker_pid, worker_pids

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.proto.v1 import mainsail_pb2_grpc as pb_grpc

pytestmark = pytest.mark.e2e

DEPLOYMENT = """\
apiVersion: mainsail.dev/v1alpha1
kind: ModelDeployment
metadata:
  name: tp-up
spec:
  model: {name: tiny-llama, generate: llama}
  engine: {maxModelLen: 1024, maxNumSeqs: 8, tensorParallel: 2}
  pools:
    unified: {replicas: 2}
    cache: {enabled: false}
"""
TOKENS = 400


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    workdir = tmp_path_factory.mktemp("up-tp")
    spec = workdir / "tp.yaml"
    spec.write_text(DEPLOYMENT)
    with running_stack(workdir, ["-f", str(spec), "--http-port", "0", "--grpc-port", "0"]) as e:
        yield e


def rank_pids(stack: dict[str, Any], worker_pid: int) -> list[int]:
    """The rank actors ``worker_pid`` drives (see the module doc)."""
    ours = psutil.Process(stack["up_pid"]).children(recursive=True)
    ranks = set()
    for proc in ours:
        try:
            if proc.cmdline()[:1] and proc.cmdline()[0].startswith("ray::RankActor"):
                ranks.add(proc.pid)
        except psutil.NoSuchProcess:
            continue
    listening = {
        c.laddr.port: c.pid
        for c in psutil.net_connections("tcp")
        if c.status == psutil.CONN_LISTEN and c.pid in ranks and c.laddr
    }
    dialled = {c.raddr.port for c in psutil.Process(worker_pid).net_connections("tcp") if c.raddr}
    return sorted({listening[p] for p in dialled if p in listening})


def _request(stack: dict[str, Any]) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        model=stack["model"],
        prompt="Two ranks hold this worker's heads, and one of them",
        sampling=pb.SamplingParams(max_tokens=TOKENS, temperature=0, ignore_eos=True),
    )


@pytest.mark.timeout(900)
def test_a_rank_killed_mid_stream_moves_the_request_token_identically(
    stack: dict[str, Any],
) -> None:
    request = _request(stack)
    with grpc.insecure_channel(stack["grpc"]) as channel:
        stub = pb_grpc.InferenceStub(channel)
        reference = [t for r in stub.Generate(request, timeout=300) for t in r.token_ids]
        assert len(reference) == TOKENS
        workers = worker_pids(stack)
        ranks = {w: rank_pids(stack, pid) for w, pid in workers.items()}
        assert all(len(r) == 2 for r in ranks.values()), ranks  # tp=2: two ranks each
        assert not set(ranks["tp-up-unified-0"]) & set(ranks["tp-up-unified-1"]), ranks
        tokens: list[int] = []
        served_by: list[str] = []
        victim: tuple[str, int] | None = None
        last = pb.GenerateResponse()
        for last in stub.Generate(request, timeout=300):
            tokens += last.token_ids
            served_by.append(last.worker_id)
            if victim is None and len(tokens) >= 20:
                victim = (last.worker_id, ranks[last.worker_id][-1])
                psutil.Process(victim[1]).kill()
    assert victim is not None, "the stream finished before a rank could be killed"
    assert last.finish_reason == "length" and not last.error, last.error
    assert len(set(served_by)) == 2, "the request should have moved to the other worker"
    assert served_by[-1] != victim[0]
    assert tokens == reference
    assert last.usage.completion_tokens == TOKENS
    metrics = httpx.get(stack["metrics"], timeout=10).text
    assert "mainsail_router_resumes_total 1.0" in metrics
    # the worker that lost a rank ended like a dead worker: its process is gone
    assert not psutil.pid_exists(workers[victim[0]]) or (
        psutil.Process(workers[victim[0]]).status() == psutil.STATUS_ZOMBIE
    )

    # the supervisor replaces it with fresh ranks; it registers again and serves the tokens
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            again = worker_pid(stack, victim[0])
        except (StopIteration, AssertionError, httpx.HTTPError):
            again = None
        if again is not None and again != workers[victim[0]]:
            break
        time.sleep(1)
    else:
        raise AssertionError(f"{victim[0]} was not replaced")
    fresh = rank_pids(stack, again)
    assert len(fresh) == 2 and not set(fresh) & set(ranks[victim[0]]), (fresh, ranks)
    others = next(w for w in workers if w != victim[0])
    httpx.post(
        f"{stack['http']}/workers/{others}/drain", headers=admin(stack), timeout=10
    )  # only the new one serves
    try:
        with grpc.insecure_channel(stack["grpc"]) as channel:
            responses = list(pb_grpc.InferenceStub(channel).Generate(request, timeout=300))
        assert {r.worker_id for r in responses if r.worker_id} == {victim[0]}
        assert [t for r in responses for t in r.token_ids] == reference
    finally:
        httpx.delete(f"{stack['http']}/workers/{others}/drain", headers=admin(stack), timeout=10)
