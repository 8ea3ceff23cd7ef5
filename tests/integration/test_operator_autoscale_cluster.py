"""The operator's autoscaler against a real API server and a real router on loopback.

The operator runs as its chart's ServiceAccount (fixture `operator`, conftest.py) with
`MAINSAIL_OPERATOR_ROUTER_METRICS_URL` pointing at loopback; a worker registered by the real
`Registrar` heartbeats whatever load the test sets.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.operator_harness import LoopbackRouter, OperatorProcess, get, wait_for

from mainsail.workers.host import WorkerSpec

pytestmark = pytest.mark.integration


def test_autoscaler_follows_the_router_load(
    kube_testbed: Any,
    kube_namespace: str,
    operator: OperatorProcess,
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    """Load heartbeated to a real router moves the ServingPool and the RayCluster; a dead
    router changes nothing and status says why."""
    bed, ns = kube_testbed, kube_namespace
    router = LoopbackRouter(tiny_model_dir, tmp_path)
    try:
        md = {
            "apiVersion": "mainsail.dev/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": "auto"},
            "spec": {
                "model": {"name": "tiny-auto", "generate": "llama"},
                "router": {"httpPort": router.http_port},
                "pools": {
                    "unified": {
                        "replicas": 1,
                        "autoscaling": {
                            "enabled": True, "minReplicas": 1, "maxReplicas": 4,
                            "targetQueueDepth": 2, "targetKvUtilization": 0.8,
                            "scaleDownDelaySeconds": 3,
                        },
                    }
                },
            },
        }  # fmt: skip
        bed.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(md))

        def replicas() -> tuple[int, int]:
            pool = get(bed, ns, "servingpool", "auto-unified")["spec"]["replicas"]
            groups = get(bed, ns, "raycluster", "auto")["spec"]["workerGroupSpecs"]
            return int(pool), int(groups[0]["replicas"])

        def autoscaling() -> dict[str, Any]:
            status = get(bed, ns, "modeldeployment", "auto").get("status") or {}
            return dict((status.get("autoscaling") or {}).get("unified") or {})

        wait_for(lambda: replicas() == (1, 1), "pool at its declared 1")
        wait_for(lambda: "idle" in autoscaling().get("reason", ""), "an idle pass in status")

        router.load.update(running=4, waiting=6, kv_blocks_used=300)  # ceil(6 / 2) = 3
        wait_for(lambda: replicas() == (3, 3), "scale-up to 3 in pool and RayCluster")
        status = autoscaling()
        assert status["desiredReplicas"] == 3 and "6 waiting" in status["reason"]
        assert status["lastScaleTime"]

        router.load.update(running=0, waiting=0, kv_blocks_used=900)  # 90 % > 80 %: 2 replicas
        wait_for(lambda: replicas() == (2, 2), "scale-down to 2 after the delay")
        assert "KV cache 90% used" in autoscaling()["reason"]

        router.stop()
        wait_for(
            lambda: "signals unavailable" in autoscaling().get("reason", ""),
            "a dead router reported",
        )
        time.sleep(2)  # two more passes: nothing moves without signals
        assert replicas() == (2, 2)
        events = json.loads(
            bed.kubectl(
                "get", "events", "-n", ns, "--field-selector", "involvedObject.name=auto",
                "-o", "json",
            ).stdout
        )["items"]  # fmt: skip
        assert {"ScaledUp", "ScaledDown"} <= {e["reason"] for e in events}
    finally:
        router.stop()


def test_a_request_wakes_a_pool_scaled_to_zero(
    kube_testbed: Any,
    kube_namespace: str,
    operator: OperatorProcess,
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    """Scale-to-zero, woken by demand: a real router with no worker stays Ready and holds a
    request; the operator's autoscaler reads it as queued demand and scales the ServingPool
    (and the RayCluster) from 0 to 1; a real worker on the tiny checkpoint (standing in for the
    one the Ray head's supervisor starts on the new pod, which this API-server-only tier has
    none of) registers and the held request is answered."""
    bed, ns = kube_testbed, kube_namespace
    router = LoopbackRouter(tiny_model_dir, tmp_path, model_name="tiny-zero", workers=())
    worker: subprocess.Popen[bytes] | None = None
    try:
        assert httpx.get(f"http://127.0.0.1:{router.http_port}/health").status_code == 200
        md = {
            "apiVersion": "mainsail.dev/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": "zero"},
            "spec": {
                "model": {"name": "tiny-zero", "generate": "llama"},
                "router": {"httpPort": router.http_port},
                "pools": {
                    "unified": {
                        "replicas": 0,
                        "autoscaling": {
                            "enabled": True, "minReplicas": 0, "maxReplicas": 2,
                            "targetQueueDepth": 1, "scaleDownDelaySeconds": 600,
                        },
                    },
                    "cache": {"enabled": False},
                },
            },
        }  # fmt: skip
        bed.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(md))

        def replicas() -> tuple[int, int]:
            pool = get(bed, ns, "servingpool", "zero-unified")["spec"]["replicas"]
            groups = get(bed, ns, "raycluster", "zero")["spec"]["workerGroupSpecs"]
            return int(pool), int(groups[0]["replicas"])

        def reason() -> str:
            status = get(bed, ns, "modeldeployment", "zero").get("status") or {}
            return str(((status.get("autoscaling") or {}).get("unified") or {}).get("reason", ""))

        wait_for(lambda: replicas() == (0, 0) and "idle" in reason(), "an idle pool at zero")
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            held = pool.submit(
                httpx.post,
                f"http://127.0.0.1:{router.http_port}/v1/completions",
                json={"model": "tiny-zero", "prompt": "Wake up", "max_tokens": 4,
                      "temperature": 0, "ignore_eos": True},
                timeout=150,
            )  # fmt: skip
            wait_for(lambda: replicas() == (1, 1), "scale-up from 0 on held demand", timeout=60)
            assert "idle" not in reason() and not held.done()  # the held request is the load
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
                )  # fmt: skip
            reply = held.result(timeout=150)
        assert reply.status_code == 200, reply.text
        assert reply.json()["usage"]["completion_tokens"] == 4
    finally:
        if worker is not None and worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(timeout=30)
        router.stop()
