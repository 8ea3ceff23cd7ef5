"""End to end: a sharded worker that loses one rank fails over like a dead worker (issue 13).

`mainsail up` with two sharded workers, in three layouts (one stack each):

* ``tp``: tensor-parallel tiny Llama, tp=2 (two rank actors per worker);
* ``ep``: expert-parallel tiny Mixtral, tp=1 and ep=2 (rank 0 holds attention and half of
  the experts, rank 1 only the other half: a step's tokens are dispatched to it and
  combined back);
* ``elastic``: the same Mixtral started at ep=1 (range 1..2) and scaled to ep=2 through the
  router's admin API before the stream (`POST /workers/<id>/experts`), so the killed rank is
  one that joined the serving worker. The expert-parallel autoscaler is kept from acting
  (one round a day): it would move the degree on its own.

While a greedy stream is served by one worker, one of *its* rank actors (the last rank: the
expert-only one for ep) is SIGKILLed, never the worker itself. The worker's next step finds
the rank gone (`ShardLost`, an `EngineFatalError`), the worker actor ends its process
(`ray_actor._die`), the router sees a dead worker and continues the stream on the other
worker by recompute (the dead worker's KV died with it), and the client gets exactly the
tokens of an undisturbed run. The supervisor then starts a replacement with fresh ranks (at
the range's minimum for elastic), which registers again and serves the same tokens.

The rank's pid comes from the stack's Ray (`support.stack_ranks`), never from a process name.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import psutil
import pytest
from support.stack import admin, running_stack, worker_pid, worker_pids
from support.stack_ranks import joined_ray, rank_pids, wait_rank_pids

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.proto.v1 import mainsail_pb2_grpc as pb_grpc

pytestmark = pytest.mark.e2e

TOKENS = 400


@dataclass(frozen=True)
class Layout:
    """One sharded worker layout: its deployment and what the test expects of it."""

    name: str
    model: str
    generate: str
    engine: str
    """`spec.engine`'s parallel fields, as YAML flow-map entries."""
    scale_to: int | None = None
    """Expert-parallel degree every worker is moved to before the stream (elastic)."""
    restarted_ranks: int = 2
    """Ranks a replacement worker starts with."""
    args: tuple[str, ...] = ()

    def deployment(self) -> str:
        return f"""\
apiVersion: mainsail.dev/v1alpha1
kind: ModelDeployment
metadata:
  name: {self.name}
spec:
  model: {{name: {self.model}, generate: {self.generate}}}
  engine: {{maxModelLen: 1024, maxNumSeqs: 8, {self.engine}}}
  pools:
    unified: {{replicas: 2}}
    cache: {{enabled: false}}
"""


LAYOUTS = [
    Layout("tp-up", "tiny-llama", "llama", "tensorParallel: 2"),
    Layout("ep-up", "tiny-moe", "mixtral", "expertParallel: {min: 2, max: 2}"),
    Layout(
        "elastic-up",
        "tiny-moe",
        "mixtral",
        "expertParallel: {min: 1, max: 2}",
        scale_to=2,
        restarted_ranks=1,
        args=("--autoscale-seconds", "86400"),
    ),
]


@pytest.fixture(scope="module", params=LAYOUTS, ids=["tp", "ep", "elastic"])
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    layout: Layout = request.param
    workdir = tmp_path_factory.mktemp(layout.name)
    spec = workdir / "deployment.yaml"
    spec.write_text(layout.deployment())
    args = ["-f", str(spec), "--http-port", "0", "--grpc-port", "0", *layout.args]
    with running_stack(workdir, args) as endpoints, joined_ray(endpoints):
        yield {**endpoints, "layout": layout}


def _request(stack: dict[str, Any]) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        model=stack["model"],
        prompt="Two ranks hold this worker's shards, and one of them",
        sampling=pb.SamplingParams(max_tokens=TOKENS, temperature=0, ignore_eos=True),
    )


def _workers(stack: dict[str, Any]) -> list[dict[str, Any]]:
    reply = httpx.get(stack["http"] + "/workers", headers=admin(stack), timeout=10)
    workers: list[dict[str, Any]] = reply.json()["data"]
    return workers


def _scale_every_worker(stack: dict[str, Any], degree: int, timeout: float) -> None:
    """Ask each worker for ``degree`` expert ranks (the router's admin API) and wait until
    every one reports serving at it."""
    for worker in _workers(stack):
        reply = httpx.post(
            f"{stack['http']}/workers/{worker['id']}/experts",
            json={"expertParallel": degree},
            headers=admin(stack),
            timeout=60,
        )
        assert reply.status_code == 200 and reply.json()["target"] == degree, reply.text
    deadline = time.monotonic() + timeout
    while {w["expert_parallel"] for w in _workers(stack)} != {degree}:
        assert time.monotonic() < deadline, f"not at ep {degree}: {_workers(stack)}"
        time.sleep(1)


@pytest.mark.timeout(1200)
def test_a_rank_killed_mid_stream_moves_the_request_token_identically(
    stack: dict[str, Any],
) -> None:
    layout: Layout = stack["layout"]
    request = _request(stack)
    with grpc.insecure_channel(stack["grpc"]) as channel:
        stub = pb_grpc.InferenceStub(channel)
        reference = [t for r in stub.Generate(request, timeout=300) for t in r.token_ids]
        assert len(reference) == TOKENS
        if layout.scale_to is not None:
            _scale_every_worker(stack, layout.scale_to, timeout=300)
        workers = worker_pids(stack)
        ranks = {w: rank_pids(stack, w) for w in workers}
        assert all(len(r["ranks"]) == 2 for r in ranks.values()), ranks  # two ranks each
        assert not {*ranks[f"{layout.name}-unified-0"]["ranks"]} & {
            *ranks[f"{layout.name}-unified-1"]["ranks"]
        }, ranks
        tokens: list[int] = []
        served_by: list[str] = []
        victim: tuple[str, int] | None = None
        last = pb.GenerateResponse()
        for last in stub.Generate(request, timeout=300):
            tokens += last.token_ids
            served_by.append(last.worker_id)
            if victim is None and len(tokens) >= 20:
                victim = (last.worker_id, ranks[last.worker_id]["ranks"][-1])
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
    fresh = wait_rank_pids(stack, victim[0], layout.restarted_ranks, timeout=120)["ranks"]
    assert not set(fresh) & set(ranks[victim[0]]["ranks"]), (fresh, ranks)
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


IDLE_TOKENS = 32
NOTICE_S = 30.0


def _listed(stack: dict[str, Any], worker_id: str) -> str | None:
    """The address the router lists for ``worker_id`` (None: not listed)."""
    return next((w["address"] for w in _workers(stack) if w["id"] == worker_id), None)


@pytest.mark.timeout(1200)
def test_a_rank_killed_while_idle_ends_the_worker_before_any_request(
    stack: dict[str, Any],
) -> None:
    """No request reaches the worker: its idle rank check (`rank_watch`) finds the dead rank
    and the worker ends, so the router drops it within `NOTICE_S` and the supervisor starts a
    replacement, which serves the undisturbed tokens."""
    layout: Layout = stack["layout"]
    victim, other = f"{layout.name}-unified-0", f"{layout.name}-unified-1"
    if layout.scale_to is not None:
        _scale_every_worker(stack, layout.scale_to, timeout=300)
    ranks = wait_rank_pids(stack, victim, 2, timeout=600)["ranks"]
    wait_rank_pids(stack, other, 2, timeout=600)
    request = _request(stack)
    request.sampling.max_tokens = IDLE_TOKENS
    with grpc.insecure_channel(stack["grpc"]) as channel:
        stub = pb_grpc.InferenceStub(channel)
        reference = [t for r in stub.Generate(request, timeout=300) for t in r.token_ids]
    assert len(reference) == IDLE_TOKENS
    old_pid, old_address = worker_pid(stack, victim), _listed(stack, victim)
    assert old_address is not None

    psutil.Process(ranks[-1]).kill()
    killed = time.monotonic()
    while _listed(stack, victim) == old_address:
        assert time.monotonic() - killed < NOTICE_S, f"{victim} still listed after {NOTICE_S} s"
        time.sleep(0.25)
    dropped = time.monotonic() - killed
    assert not psutil.pid_exists(old_pid) or (
        psutil.Process(old_pid).status() == psutil.STATUS_ZOMBIE
    )
    print(f"{layout.name}: worker with a dead idle rank dropped after {dropped:.1f} s")

    deadline = time.monotonic() + 600
    while _listed(stack, victim) is None:
        assert time.monotonic() < deadline, f"{victim} was not replaced"
        time.sleep(1)
    fresh = wait_rank_pids(stack, victim, layout.restarted_ranks, timeout=120)["ranks"]
    assert not set(fresh) & set(ranks), (fresh, ranks)
    httpx.post(f"{stack['http']}/workers/{other}/drain", headers=admin(stack), timeout=10)
    try:
        with grpc.insecure_channel(stack["grpc"]) as channel:
            responses = list(pb_grpc.InferenceStub(channel).Generate(request, timeout=300))
        assert {r.worker_id for r in responses if r.worker_id} == {victim}
        assert [t for r in responses for t in r.token_ids] == reference
        assert not responses[-1].error
    finally:
        httpx.delete(f"{stack['http']}/workers/{other}/drain", headers=admin(stack), timeout=10)
