"""The operator's autoscaler against a real API server and a real router on loopback.

The operator runs as its chart's ServiceAccount (fixture `operator`, conftest.py) with
`MAINSAIL_OPERATOR_ROUTER_METRICS_URL` pointing at loopback; a worker registered by the real
`Registrar` heartbeats whatever load the test sets. Fixture `autoscaled` starts that router and
applies a ModelDeployment with one autoscaled unified pool pointing at it.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.operator_harness import (
    LoopbackRouter,
    OperatorProcess,
    admin_secret,
    get,
    wait_for,
    worker_pod,
)

from mainsail.workers.worker_spec import WorkerSpec

pytestmark = pytest.mark.integration


@dataclass
class Autoscaled:
    """A ModelDeployment `name` with one autoscaled unified pool, and its loopback router."""

    bed: Any
    ns: str
    name: str
    router: LoopbackRouter

    def replicas(self) -> tuple[int, int]:
        """(ServingPool spec.replicas, the RayCluster worker group's replicas)."""
        pool = get(self.bed, self.ns, "servingpool", f"{self.name}-unified")["spec"]["replicas"]
        groups = get(self.bed, self.ns, "raycluster", self.name)["spec"]["workerGroupSpecs"]
        return int(pool), int(groups[0]["replicas"])

    def autoscaling(self) -> dict[str, Any]:
        """The pool's `status.autoscaling.unified`."""
        status = get(self.bed, self.ns, "modeldeployment", self.name).get("status") or {}
        return dict((status.get("autoscaling") or {}).get("unified") or {})

    def events(self) -> set[str]:
        listed = self.bed.kubectl(
            "get", "events", "-n", self.ns, "--field-selector",
            f"involvedObject.name={self.name}", "-o", "json",
        ).stdout  # fmt: skip
        return {e["reason"] for e in json.loads(listed)["items"]}


@pytest.fixture
def autoscaled(
    kube_testbed: Any,
    kube_namespace: str,
    operator: OperatorProcess,
    tiny_model_dir: Path,
    tmp_path: Path,
) -> Iterator[Callable[..., Autoscaled]]:
    """`deploy(name, model, replicas, autoscaling, workers=..., cache=True)`: a loopback
    router (with `workers` registered) and the deployment applied; routers stopped at the end."""
    routers: list[LoopbackRouter] = []

    def deploy(
        name: str,
        model: str,
        replicas: int,
        autoscaling: dict[str, Any],
        *,
        workers: tuple[tuple[str, str], ...] = (("w-0", "unified"),),
        cache: bool = True,
    ) -> Autoscaled:
        router = LoopbackRouter(tiny_model_dir, tmp_path, model_name=model, workers=workers)
        routers.append(router)
        pools: dict[str, Any] = {
            "unified": {"replicas": replicas, "autoscaling": {"enabled": True, **autoscaling}}
        }
        if not cache:
            pools["cache"] = {"enabled": False}
        # The router's admin token where the operator reads it (for its drains).
        secret = admin_secret(f"{name}-admin")
        kube_testbed.kubectl("apply", "-n", kube_namespace, "-f", "-", input=json.dumps(secret))
        md = {
            "apiVersion": "mainsail.dev/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": name},
            "spec": {
                "model": {"name": model, "generate": "llama"},
                "router": {"httpPort": router.http_port, "auth": {"secretName": f"{name}-admin"}},
                "pools": pools,
            },
        }
        kube_testbed.kubectl("apply", "-n", kube_namespace, "-f", "-", input=json.dumps(md))
        return Autoscaled(kube_testbed, kube_namespace, name, router)

    try:
        yield deploy
    finally:
        for router in routers:
            router.stop()


def test_autoscaler_follows_the_router_load(autoscaled: Callable[..., Autoscaled]) -> None:
    """Load heartbeated to a real router moves the ServingPool and the RayCluster; a dead
    router changes nothing and status says why."""
    auto = autoscaled(
        "auto", "tiny-auto", 1,
        {"minReplicas": 1, "maxReplicas": 4, "targetQueueDepth": 2, "targetKvUtilization": 0.8,
         "scaleDownDelaySeconds": 3},
    )  # fmt: skip
    wait_for(lambda: auto.replicas() == (1, 1), "pool at its declared 1")
    wait_for(lambda: "idle" in auto.autoscaling().get("reason", ""), "an idle pass in status")

    auto.router.load.update(running=4, waiting=6, kv_blocks_used=300)  # ceil(6 / 2) = 3
    wait_for(lambda: auto.replicas() == (3, 3), "scale-up to 3 in pool and RayCluster")
    status = auto.autoscaling()
    assert status["desiredReplicas"] == 3 and "6 waiting" in status["reason"]
    assert status["lastScaleTime"]

    auto.router.load.update(running=0, waiting=0, kv_blocks_used=900)  # 90 % > 80 %: 2 replicas
    wait_for(lambda: auto.replicas() == (2, 2), "scale-down to 2 after the delay")
    assert "KV cache 90% used" in auto.autoscaling()["reason"]

    auto.router.stop()
    wait_for(
        lambda: "signals unavailable" in auto.autoscaling().get("reason", ""),
        "a dead router reported",
    )
    time.sleep(2)  # two more passes: nothing moves without signals
    assert auto.replicas() == (2, 2)
    assert {"ScaledUp", "ScaledDown"} <= auto.events()


def test_an_autoscaler_scale_in_drains_the_worker_it_removes(
    autoscaled: Callable[..., Autoscaled],
) -> None:
    """The autoscaler (not `kubectl scale`) shrinking an idle pool 2 -> 1 takes the same road:
    the operator picks the youngest worker pod, drains its worker through the real router's
    admin API, and only then lowers the worker group with that pod in `workersToDelete`;
    events say ScaledDown and Drained. The scale-down delay holds the pool until both pods
    exist, then is set to 0. With real pods and streams moving: tests/cluster/
    test_cluster_migration.py."""
    workers = (("auto-unified-0", "unified"), ("auto-unified-1", "unified"))
    auto = autoscaled(
        "auto", "tiny-auto", 2,
        {"minReplicas": 1, "maxReplicas": 2, "targetQueueDepth": 1,
         "scaleDownDelaySeconds": 600},
        workers=workers,
    )  # fmt: skip
    bed, ns = auto.bed, auto.ns
    wait_for(lambda: auto.replicas() == (2, 2), "pool and worker group at the declared 2")
    for i in range(2):
        bed.kubectl("apply", "-f", "-", input=json.dumps(worker_pod(ns, "auto", "unified", i)))
        time.sleep(1.1)  # creation times have one-second resolution: the youngest is -1
    wait_for(lambda: "holding 2" in auto.autoscaling().get("reason", ""), "a pass holding 2")
    patch = {"spec": {"pools": {"unified": {"autoscaling": {"scaleDownDelaySeconds": 0}}}}}
    bed.kubectl("patch", "-n", ns, "modeldeployment", "auto", "--type=merge",
                "-p", json.dumps(patch))  # fmt: skip
    wait_for(lambda: auto.replicas() == (1, 1), "the autoscaler's scale-in reaching KubeRay")
    groups = get(bed, ns, "raycluster", "auto")["spec"]["workerGroupSpecs"]
    assert groups[0]["scaleStrategy"] == {"workersToDelete": ["auto-unified-1"]}
    assert {w["id"]: w["draining"] for w in auto.router.listed()} == {
        "auto-unified-0": False, "auto-unified-1": True,
    }  # fmt: skip
    events = bed.kubectl(
        "get", "events", "-n", ns, "--field-selector", "involvedObject.name=auto", "-o", "json",
    ).stdout  # fmt: skip
    seen = {(e["reason"], e["message"]) for e in json.loads(events)["items"]}
    assert any(r == "ScaledDown" and m.startswith("unified: 2 -> 1") for r, m in seen), seen
    assert any(r == "Drained" and "auto-unified-1" in m for r, m in seen), seen


def test_a_request_wakes_a_pool_scaled_to_zero(
    autoscaled: Callable[..., Autoscaled], tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Scale-to-zero, woken by demand: a real router with no worker stays Ready and holds a
    request; the operator's autoscaler reads it as queued demand and scales the ServingPool
    (and the RayCluster) from 0 to 1; a real worker on the tiny checkpoint (standing in for the
    one the Ray head's supervisor starts on the new pod, which this API-server-only tier has
    none of) registers and the held request is answered. On a real node:
    tests/cluster/test_cluster_serving.py."""
    auto = autoscaled(
        "zero", "tiny-zero", 0,
        {"minReplicas": 0, "maxReplicas": 2, "targetQueueDepth": 1, "scaleDownDelaySeconds": 600},
        workers=(), cache=False,
    )  # fmt: skip
    router = auto.router
    worker: subprocess.Popen[bytes] | None = None
    try:
        assert httpx.get(f"http://127.0.0.1:{router.http_port}/health").status_code == 200
        wait_for(
            lambda: auto.replicas() == (0, 0) and "idle" in auto.autoscaling().get("reason", ""),
            "an idle pool at zero",
        )
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            held = pool.submit(
                httpx.post,
                f"http://127.0.0.1:{router.http_port}/v1/completions",
                json={"model": "tiny-zero", "prompt": "Wake up", "max_tokens": 4,
                      "temperature": 0, "ignore_eos": True},
                timeout=150,
            )  # fmt: skip
            wait_for(
                lambda: auto.replicas() == (1, 1), "scale-up from 0 on held demand", timeout=60
            )
            # the held request is the load
            assert "idle" not in auto.autoscaling().get("reason", "") and not held.done()
            spec = WorkerSpec(
                worker_id="zero-unified-0", model_name="tiny-zero", model_dir=tiny_model_dir,
                router_address=router.fleet,
            )  # fmt: skip
            spec_file = tmp_path / "worker.json"
            spec_file.write_text(spec.model_dump_json())
            with (tmp_path / "worker.log").open("wb") as log:
                worker = subprocess.Popen(
                    [sys.executable, "-m", "mainsail.workers", "--spec", str(spec_file)],
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                    env={**os.environ, **router.worker_env},
                )  # fmt: skip
            reply = held.result(timeout=150)
        assert reply.status_code == 200, reply.text
        assert reply.json()["usage"]["completion_tokens"] == 4
    finally:
        if worker is not None and worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(timeout=30)


def _peers_slice(name: str, index: int, router: LoopbackRouter) -> dict[str, Any]:
    """One EndpointSlice of `<name>-router-peers` listing router pod `index`, as the cluster's
    EndpointSlice controller writes it (there is none on this API-server-only bed). The pod IP
    is never dialed (see the operator harness); the http port tells the loopback routers apart,
    which in a cluster share one port on different IPs."""
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{name}-router-peers-{index}",
            "labels": {"kubernetes.io/service-name": f"{name}-router-peers"},
        },
        "addressType": "IPv4",
        "ports": [
            {"name": "fleet", "port": int(router.fleet.rpartition(":")[2]), "protocol": "TCP"},
            {"name": "http", "port": router.http_port, "protocol": "TCP"},
        ],
        "endpoints": [
            {
                "addresses": [f"10.244.0.{index + 10}"],
                "conditions": {"ready": True, "serving": True, "terminating": False},
                "targetRef": {"kind": "Pod", "name": f"{name}-router-{index}"},
            }
        ],
    }


def test_the_autoscaler_and_status_read_every_router_replica(
    kube_testbed: Any,
    kube_namespace: str,
    operator: OperatorProcess,
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    """`spec.router.replicas: 2` with two real routers listed by the router-peers
    EndpointSlices: a worker heartbeating to both is counted once (waiting 2 -> 2 replicas, not
    4), a worker registered with one replica only is not ready yet, and requests each router
    holds add up (1 + 2 held -> 3 replicas; either router alone would say 1 or 2)."""
    name, model = "fleet", "tiny-fleet"
    routers = []
    try:
        for i in range(2):
            (tmp_path / f"r{i}").mkdir()
            routers.append(
                LoopbackRouter(tiny_model_dir, tmp_path / f"r{i}", model_name=model, workers=())
            )
        a, b = routers
        for router in routers:
            router.load.update(running=2, waiting=2, kv_blocks_used=10)
            router.add_worker("w-0")  # one worker, heartbeating to both replicas
        md = {
            "apiVersion": "mainsail.dev/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": name},
            "spec": {
                "model": {"name": model, "generate": "llama"},
                "router": {"replicas": 2, "httpPort": a.http_port},
                "pools": {
                    "cache": {"enabled": False},
                    "unified": {
                        "replicas": 1,
                        "autoscaling": {
                            "enabled": True, "minReplicas": 0, "maxReplicas": 8,
                            "targetQueueDepth": 1, "scaleDownDelaySeconds": 600,
                        },
                    },
                },
            },
        }  # fmt: skip
        bed, ns = kube_testbed, kube_namespace
        bed.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(md))
        for i, router in enumerate(routers):
            bed.kubectl(
                "apply", "-n", ns, "-f", "-", input=json.dumps(_peers_slice(name, i, router))
            )

        def auto() -> dict[str, Any]:
            status = get(bed, ns, "modeldeployment", name).get("status") or {}
            return dict((status.get("autoscaling") or {}).get("unified") or {})

        def pool() -> int:
            return int(get(bed, ns, "servingpool", f"{name}-unified")["spec"]["replicas"])

        def pools_ready() -> tuple[str, str]:
            md = get(bed, ns, "modeldeployment", name)
            found = [
                c for c in md.get("status", {}).get("conditions", []) if c["type"] == "PoolsReady"
            ]
            return (found[0]["status"], found[0]["message"]) if found else ("", "")

        wait_for(lambda: pool() == 2 and "2 waiting" in auto().get("reason", ""), "2 replicas")
        time.sleep(3)  # more passes: still 2 (a sum of the replicas would say 4)
        assert pool() == 2 and "2 waiting" in auto()["reason"]
        wait_for(lambda: "1/2 registered" in pools_ready()[1], "1 of 2 workers registered")

        for router in routers:  # nothing waiting now: the pool holds at 2 (scale-down delay)
            router.load.update(waiting=0)
        a.add_worker("w-1")  # registered with replica a only: a alone would say 2/2
        time.sleep(4)  # a resync (3 s) or more
        assert pools_ready() == (
            "False",
            "waiting for workers: unified 1/2 registered (0 pods ready)",
        )
        b.add_worker("w-1")
        wait_for(lambda: pools_ready()[0] == "True", "both workers registered with both")

        for router in routers:
            router.load.update(running=0, waiting=0, kv_blocks_used=0)
            for worker in ("w-0", "w-1"):
                router.remove_worker(worker)
        with concurrent.futures.ThreadPoolExecutor(3) as held:
            body = {"model": model, "prompt": "Hold", "max_tokens": 1}
            for router in (a, b, b):  # no worker: each router holds what it was sent
                held.submit(
                    httpx.post, f"http://127.0.0.1:{router.http_port}/v1/completions",
                    json=body, timeout=60,
                )  # fmt: skip
            wait_for(lambda: pool() == 3, "3 replicas for 1 + 2 held requests", timeout=40)
            assert "3 waiting" in auto()["reason"]
            for router in routers:  # ends the held requests
                router.stop()
    finally:
        for router in routers:
            router.stop()
