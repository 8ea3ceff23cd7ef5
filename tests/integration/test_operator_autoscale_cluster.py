"""The operator's autoscaler against a real API server and a real router on loopback.

The operator runs as its chart's ServiceAccount (fixture `operator`, conftest.py) with
`MAINSAIL_OPERATOR_ROUTER_METRICS_URL` pointing at loopback; a worker registered by the real
`Registrar` heartbeats whatever load the test sets.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from support.operator_harness import LoopbackRouter, OperatorProcess, get, wait_for

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
