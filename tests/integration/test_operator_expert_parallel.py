"""Expert-parallel autoscaling end to end: load on a real sharded MoE worker makes the operator
move its expert-parallel degree from 1 to 2, and back to 1 once it is idle (the switch then
happens with no engine step to carry it); status and Events say so.

Real parts: the API server (fixture `kube_testbed`), the operator process as its chart's
ServiceAccount (fixture `operator`), a router process on loopback with an admin token (from the
Secret the deployment's `router.auth.secretName` names, which the operator reads by name), and
a worker (`WorkerHost`, on its own event-loop thread) running the tiny Mixtral checkpoint as
rank actors on a local Ray. The loop under test: the worker heartbeats its degree and expert
load -> the router's /metrics -> the operator's policy -> `POST /workers/<id>/experts` with the
admin token -> `Worker.ScaleExperts` -> the engine switches between two steps. A bounded client
(at most ``CAP`` requests, ``IN_FLIGHT`` at a time, ``DEADLINE_S``) is the load; every response
must be complete.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.operator_harness import LoopbackRouter, OperatorProcess, get, wait_for
from support.ray_local import local_ray

from mainsail.spec.engine_settings import EngineSettings, ExpertParallelRange
from mainsail.spec.router_auth import ADMIN_TOKEN_ENV
from mainsail.spec.worker_auth import WorkerCredential
from mainsail.workers.host import WorkerHost
from mainsail.workers.worker_spec import WorkerSpec

pytestmark = pytest.mark.integration

MODEL = "tiny-moe"
ADMIN = "admin-token-for-the-test"
CAP, IN_FLIGHT, MAX_TOKENS, DEADLINE_S = 60, 3, 48, 150.0


class ThreadWorker:
    """A `WorkerHost` on its own event loop in a thread (the test's own thread blocks on
    kubectl); `stop` deregisters it and releases its ranks."""

    def __init__(self, spec: WorkerSpec, credential: WorkerCredential) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.host = WorkerHost(spec, credential=credential)
        self._run(self.host.start(), 300)
        self._run(self.host.wait_registered(60), 90)

    def _run(self, coro: Any, timeout: float) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        try:
            self._run(self.host.stop(), 60)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def ray_two_cpus() -> Iterator[None]:
    with local_ray(num_cpus=2):  # one logical CPU per rank bundle: room for ep 2
        yield


@pytest.fixture(scope="module")
def mixtral() -> Path:
    from mainsail.workers.checkpoint import ensure_checkpoint

    return ensure_checkpoint("mixtral")


@pytest.fixture
def moe_router(mixtral: Path, tmp_path: Path) -> Iterator[LoopbackRouter]:
    router = LoopbackRouter(
        mixtral, tmp_path, model_name=MODEL, workers=(),
        env={ADMIN_TOKEN_ENV: ADMIN},
    )  # fmt: skip
    try:
        yield router
    finally:
        router.stop()


def _status(bed: Any, ns: str) -> dict[str, Any]:
    status = get(bed, ns, "modeldeployment", "moe").get("status") or {}
    return dict((status.get("expertParallel") or {}).get("unified") or {})


def _events(bed: Any, ns: str) -> list[dict[str, Any]]:
    listed = bed.kubectl(
        "get", "events", "-n", ns, "--field-selector", "involvedObject.name=moe", "-o", "json"
    ).stdout
    items: list[dict[str, Any]] = json.loads(listed)["items"]
    return items


@pytest.mark.timeout(420)
def test_load_moves_the_expert_parallel_degree_up_and_idle_down(
    kube_testbed: Any,
    kube_namespace: str,
    operator: OperatorProcess,
    moe_router: LoopbackRouter,
    mixtral: Path,
    ray_two_cpus: None,
) -> None:
    bed, ns, router = kube_testbed, kube_namespace, moe_router
    secret = {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "moe-router-auth"},
        "data": {"adminToken": base64.b64encode(ADMIN.encode()).decode()},
    }  # fmt: skip
    bed.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(secret))
    expert_range = {"min": 1, "max": 2, "targetRequestsPerRank": 1, "cooldownSeconds": 5,
                    "scaleDownDelaySeconds": 3}  # fmt: skip
    md = {
        "apiVersion": "mainsail.dev/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": "moe"},
        "spec": {
            "model": {"name": MODEL, "generate": "mixtral"},
            "engine": {"expertParallel": expert_range, "maxModelLen": 256, "maxNumSeqs": 8},
            "router": {"httpPort": router.http_port, "auth": {"secretName": "moe-router-auth"}},
            "pools": {"unified": {"replicas": 1}},
        },
    }  # fmt: skip
    bed.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(md))
    engine = EngineSettings(
        expert_parallel=ExpertParallelRange(min=1, max=2), max_model_len=256, max_num_seqs=8
    )
    spec = WorkerSpec(
        worker_id="moe-unified-0", model_name=MODEL, model_dir=mixtral,
        engine=engine, router_address=router.fleet, metrics_port=None,
    )  # fmt: skip
    worker = ThreadWorker(spec, router.worker)
    try:
        # idle at ep 1: the operator reads the worker's degree and holds it
        idle = wait_for(lambda: (s := _status(bed, ns)).get("current") == 1 and s, "ep 1 seen")
        assert idle["target"] == 1, idle
        # a third party without the admin token cannot rescale the worker
        url = f"http://127.0.0.1:{router.http_port}/workers/moe-unified-0/experts"
        assert httpx.post(url, json={"expertParallel": 2}).status_code == 401

        done: list[httpx.Response] = []
        deadline = time.monotonic() + DEADLINE_S
        with (
            concurrent.futures.ThreadPoolExecutor(IN_FLIGHT) as pool,
            httpx.Client(base_url=f"http://127.0.0.1:{router.http_port}", timeout=120) as http,
        ):
            body = {"model": MODEL, "prompt": "Experts, assemble", "max_tokens": MAX_TOKENS,
                    "temperature": 0, "ignore_eos": True}  # fmt: skip
            running: set[concurrent.futures.Future[httpx.Response]] = set()
            sent = 0
            while time.monotonic() < deadline:
                for future in [f for f in running if f.done()]:
                    running.discard(future)
                    done.append(future.result())
                if _status(bed, ns).get("current") == 2:
                    break
                while len(running) < IN_FLIGHT and sent < CAP:
                    running.add(pool.submit(http.post, "/v1/completions", json=body))
                    sent += 1
                time.sleep(0.5)
            done += [f.result() for f in concurrent.futures.as_completed(running, timeout=150)]
        status = _status(bed, ns)
        assert status.get("current") == 2 and status.get("target") == 2, status
        assert status.get("lastChange"), status
        assert "requests per worker" in status["reason"], status
        scaled = [e for e in _events(bed, ns) if e["reason"] == "ExpertsScaled"]
        assert scaled and "expertParallel 1 -> 2" in scaled[0]["message"], scaled
        assert "moe-unified-0" in scaled[0]["message"]
        assert done and all(r.status_code == 200 for r in done), [r.text for r in done[:3]]
        assert all(r.json()["usage"]["completion_tokens"] == MAX_TOKENS for r in done)
        # the worker itself reports the new degree (what the router lists to its admin)
        listed = httpx.get(
            f"http://127.0.0.1:{router.http_port}/workers",
            headers={"Authorization": f"Bearer {ADMIN}"},
        ).json()["data"]
        assert [(w["id"], w["expert_parallel"]) for w in listed] == [("moe-unified-0", 2)]

        # idle: after the scale-down delay (3 s) and the cooldown (5 s) it goes back to 1
        down = wait_for(lambda: (s := _status(bed, ns)).get("current") == 1 and s, "ep 1 again",
                        timeout=90)  # fmt: skip
        assert down["target"] == 1 and "0.0 requests per worker" in down["reason"], down
        messages = [e["message"] for e in _events(bed, ns) if e["reason"] == "ExpertsScaled"]
        assert any("expertParallel 2 -> 1" in m for m in messages), messages
    finally:
        worker.stop()
