"""The operator against a real API server, running as its chart's ServiceAccount (not admin).

One operator subprocess serves the whole module (cluster-wide, like the chart's default); each
test works in its own namespace. There is no controller-manager or KubeRay here, so nothing
creates pods: readiness is shown by writing pod and Deployment status as an admin would see it
from the kubelet. Every wait is bounded. Harness: tests/support/operator_harness.py; fixtures
`operator_identity` and `operator`: tests/integration/conftest.py.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.operator_harness import (
    EXAMPLES,
    LoopbackRouter,
    OperatorProcess,
    admin_secret,
    apply_example,
    condition,
    expected_children,
    get,
    names,
    wait_for,
    worker_pod,
)

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.stem)
def test_example_gets_its_children_and_status(
    kube_testbed: Any, kube_namespace: str, operator: OperatorProcess, example: Path
) -> None:
    md = apply_example(kube_testbed, kube_namespace, example)
    assert md["status"]["observedGeneration"] == md["metadata"]["generation"]
    assert condition(md, "KVConfigConsistent") == ("True", "FingerprintsMatch")
    assert condition(md, "Ready")[0] == "False"  # no pods exist on this test bed
    uid = md["metadata"]["uid"]
    for kind, name in expected_children(example, kube_namespace):
        refs = get(kube_testbed, kube_namespace, kind, name)["metadata"]["ownerReferences"]
        assert [(r["uid"], r["controller"]) for r in refs] == [(uid, True)]
    printed = kube_testbed.kubectl("get", "-n", kube_namespace, "modeldeployments").stdout
    assert printed.split()[:5] == ["NAME", "MODEL", "READY", "ENDPOINT", "STATUS"]


def test_kubectl_scale_flows_to_the_ray_cluster(
    kube_testbed: Any, kube_namespace: str, operator: OperatorProcess
) -> None:
    bed, ns = kube_testbed, kube_namespace
    apply_example(bed, ns, EXAMPLES / "dense-prefill-decode.yaml")
    bed.kubectl("scale", "-n", ns, "servingpool", "dense-pd-decode", "--replicas=6")

    def decode_replicas() -> int:
        groups = get(bed, ns, "raycluster", "dense-pd")["spec"]["workerGroupSpecs"]
        return int(next(g for g in groups if g["groupName"] == "decode")["replicas"])

    wait_for(lambda: decode_replicas() == 6, "RayCluster decode replicas 6")
    scale = json.loads(
        bed.kubectl(
            "get", "-n", ns, "servingpool", "dense-pd-decode", "--subresource=scale", "-o", "json"
        ).stdout
    )
    assert scale["spec"]["replicas"] == 6
    selector = set(scale["status"]["selector"].split(","))
    assert {"mainsail.dev/deployment=dense-pd", "mainsail.dev/role=decode"} <= selector
    wait_for(
        lambda: (
            get(bed, ns, "modeldeployment", "dense-pd")["status"]["pools"]["decode"]["replicas"]
            == 6
        ),
        "status",
    )
    events = bed.kubectl(
        "get", "events", "-n", ns, "--field-selector", "involvedObject.name=dense-pd", "-o", "json"
    ).stdout
    assert {"Created", "Updated"} <= {e["reason"] for e in json.loads(events)["items"]}


def test_spec_edits_roll_through(
    kube_testbed: Any, kube_namespace: str, operator: OperatorProcess
) -> None:
    bed, ns = kube_testbed, kube_namespace
    apply_example(bed, ns, EXAMPLES / "dense-prefill-decode.yaml")
    before = get(bed, ns, "deployment", "dense-pd-router")["spec"]["template"]["metadata"][
        "annotations"
    ]
    patch = {
        "spec": {
            "engine": {"blockSize": 32},
            "pools": {
                "prefill": {"replicas": 3},
                "cache": {"externalUrl": "redis://r.example:6379"},
            },
        }
    }
    bed.kubectl(
        "patch", "-n", ns, "modeldeployment", "dense-pd", "--type=merge", "-p", json.dumps(patch)
    )

    def rolled() -> bool:
        config = json.loads(get(bed, ns, "configmap", "dense-pd-config")["data"]["config.json"])
        after = get(bed, ns, "deployment", "dense-pd-router")["spec"]["template"]["metadata"][
            "annotations"
        ]
        pool = get(bed, ns, "servingpool", "dense-pd-prefill")["spec"]["replicas"]
        gone = ("StatefulSet", "dense-pd-cache") not in names(bed, ns)
        return config["kvHash"]["block_size"] == 32 and after != before and pool == 3 and gone

    wait_for(rolled, "block size, router rollout, prefill replicas, cache removal")
    md = wait_for(
        lambda: (
            (m := get(bed, ns, "modeldeployment", "dense-pd"))["status"]["observedGeneration"] == 2
            and m
        ),
        "observedGeneration 2",
    )
    assert md["status"]["kvFingerprint"].endswith("/b32/s42")
    assert condition(md, "CacheReady") == ("True", "ExternalCache")


def test_drifted_and_deleted_children_come_back(
    kube_testbed: Any, kube_namespace: str, operator: OperatorProcess
) -> None:
    bed, ns = kube_testbed, kube_namespace
    apply_example(bed, ns, EXAMPLES / "mixtral-moe.yaml")
    want = names(bed, ns)
    bed.kubectl(
        "delete",
        "-n",
        ns,
        "deployment/mixtral-moe-router",
        "servingpool/mixtral-moe-unified",
        "--wait=false",
    )
    bed.kubectl(
        "patch",
        "-n",
        ns,
        "configmap",
        "mixtral-moe-config",
        "--type=merge",
        "-p",
        '{"data":{"config.json":"{}"}}',
    )
    bed.kubectl(
        "patch",
        "-n",
        ns,
        "raycluster",
        "mixtral-moe",
        "--type=json",
        "-p",
        '[{"op":"replace","path":"/spec/workerGroupSpecs/0/replicas","value":9}]',
    )

    def repaired() -> bool:
        config = json.loads(get(bed, ns, "configmap", "mixtral-moe-config")["data"]["config.json"])
        replicas = get(bed, ns, "raycluster", "mixtral-moe")["spec"]["workerGroupSpecs"][0][
            "replicas"
        ]
        return names(bed, ns) == want and "kvFingerprint" in config and replicas == 2

    wait_for(repaired, "children restored")


def test_deleting_the_deployment_leaves_children_to_garbage_collection(
    kube_testbed: Any, kube_namespace: str, operator: OperatorProcess
) -> None:
    bed, ns = kube_testbed, kube_namespace
    md = apply_example(bed, ns, EXAMPLES / "lora-adapters.yaml")

    def versions() -> dict[tuple[str, str], str]:
        return {n: get(bed, ns, *n)["metadata"]["resourceVersion"] for n in names(bed, ns)}

    # Settle first: kopf annotates each ServingPool it handles shortly after creation.
    seen: list[dict[tuple[str, str], str]] = [versions()]

    def settled() -> bool:
        time.sleep(1.5)
        seen.append(versions())
        return seen[-1] == seen[-2]

    wait_for(settled, "children to settle")
    before = seen[-1]
    bed.kubectl("delete", "-n", ns, "modeldeployment", "lora-adapters")
    time.sleep(4)  # longer than a resync: nothing may be re-applied for a deleted owner
    after = {n: get(bed, ns, *n)["metadata"] for n in names(bed, ns)}
    assert {n: m["resourceVersion"] for n, m in after.items()} == before
    assert all(m["ownerReferences"][0]["uid"] == md["metadata"]["uid"] for m in after.values())


def test_operator_restart_loses_nothing(
    kube_testbed: Any, kube_namespace: str, operator: OperatorProcess
) -> None:
    bed, ns = kube_testbed, kube_namespace
    apply_example(bed, ns, EXAMPLES / "dense-prefill-decode.yaml")
    operator.stop()
    try:
        bed.kubectl("scale", "-n", ns, "servingpool", "dense-pd-prefill", "--replicas=5")
        bed.kubectl("delete", "-n", ns, "service/dense-pd-router", "--wait=false")
        bed.kubectl("apply", "-n", ns, "-f", str(EXAMPLES / "mixtral-moe.yaml"))
    finally:
        operator.start()
    want = expected_children(EXAMPLES / "dense-prefill-decode.yaml", ns) | expected_children(
        EXAMPLES / "mixtral-moe.yaml", ns
    )

    def converged() -> bool:
        groups = get(bed, ns, "raycluster", "dense-pd")["spec"]["workerGroupSpecs"]
        prefill = next(g for g in groups if g["groupName"] == "prefill")["replicas"]
        return names(bed, ns) == want and prefill == 5

    wait_for(converged, "state after restart")


KOPF_FINALIZER = "kopf.zalando.org/KopfFinalizerMarker"


def test_a_deployment_can_be_deleted_while_the_operator_is_down(
    kube_testbed: Any, kube_namespace: str, operator: OperatorProcess
) -> None:
    """The operator pins no finalizer on a ModelDeployment (its periodic passes are one loop,
    not kopf timers), and removes the one an older operator left; so with the operator gone
    (`helm uninstall`, `replicaCount: 0`, a crash loop) `kubectl delete modeldeployment` still
    completes, instead of hanging with every child it owns."""
    bed, ns = kube_testbed, kube_namespace
    apply_example(bed, ns, EXAMPLES / "tiny.yaml")
    wait_for(
        lambda: "last-handled-configuration" in json.dumps(get(bed, ns, "modeldeployment", "tiny")),
        "kopf's diff-base annotation (the operator handled it)",
    )
    assert not get(bed, ns, "modeldeployment", "tiny")["metadata"].get("finalizers")
    # What an operator with kopf timers left behind: removed at its next pass.
    bed.kubectl(
        "patch", "-n", ns, "modeldeployment", "tiny", "--type=merge",
        "-p", json.dumps({"metadata": {"finalizers": [KOPF_FINALIZER]}}),
    )  # fmt: skip
    wait_for(
        lambda: not get(bed, ns, "modeldeployment", "tiny")["metadata"].get("finalizers"),
        "the old kopf finalizer removed",
    )
    operator.stop()
    try:
        bed.kubectl("delete", "-n", ns, "modeldeployment", "tiny", "--timeout=30s", timeout=60)
        left = bed.kubectl("get", "-n", ns, "modeldeployments", "-o", "name").stdout.strip()
        assert left == ""
    finally:
        operator.start()


def _mark_ready(bed: Any, ns: str, kind: str, name: str) -> None:
    """Write a workload's status as its controller would once every replica is ready."""
    obj = get(bed, ns, kind, name)
    status = {
        "status": {
            "observedGeneration": obj["metadata"]["generation"],
            "replicas": obj["spec"]["replicas"],
            "readyReplicas": obj["spec"]["replicas"],
        }
    }
    bed.kubectl(
        "patch", "-n", ns, kind, name, "--subresource=status", "--type=merge",
        "-p", json.dumps(status),
    )  # fmt: skip


def test_status_is_ready_only_with_workers_registered_at_a_reachable_router(
    kube_testbed: Any,
    kube_namespace: str,
    operator: OperatorProcess,
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    """Ready pods and a ready router Deployment are not enough: `Ready` waits until the real
    router (on loopback, read by the operator as it reads the Service) has every pool's
    workers registered; a worker leaving or the router going away takes `Ready` back, and
    `kubectl get modeldeployments` prints it."""
    bed, ns = kube_testbed, kube_namespace
    router = LoopbackRouter(tiny_model_dir, tmp_path, model_name="tiny-llama", workers=())
    try:
        md = yaml.safe_load((EXAMPLES / "tiny.yaml").read_text())
        md["spec"]["router"]["httpPort"] = router.http_port
        bed.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(md))
        wait_for(lambda: names(bed, ns) >= {("Deployment", "tiny-router")}, "children")
        replicas = get(bed, ns, "servingpool", "tiny-unified")["spec"]["replicas"]
        ready = {
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
        }
        for i in range(replicas):
            bed.kubectl("apply", "-f", "-", input=json.dumps(worker_pod(ns, "tiny", "unified", i)))
            bed.kubectl(
                "patch", "-n", ns, "pod", f"tiny-unified-{i}", "--subresource=status",
                "--type=merge", "-p", json.dumps(ready),
            )  # fmt: skip
        _mark_ready(bed, ns, "deployment", "tiny-router")
        _mark_ready(bed, ns, "statefulset", "tiny-cache")

        def status_of() -> dict[str, Any]:
            return dict(get(bed, ns, "modeldeployment", "tiny").get("status") or {})

        def message(kind: str) -> str:
            return next(
                (c["message"] for c in status_of().get("conditions", []) if c["type"] == kind), ""
            )

        wait_for(lambda: "unified 0/2 registered (2 pods ready)" in message("PoolsReady"), "0/2")

        def only_pools_lag() -> bool:
            # A pass may still rewrite the router Deployment after it was marked ready (a new
            # generation no controller here observes), so keep its status current as the
            # Deployment controller would, until the only thing missing is the workers.
            _mark_ready(bed, ns, "deployment", "tiny-router")
            _mark_ready(bed, ns, "statefulset", "tiny-cache")
            return condition(get(bed, ns, "modeldeployment", "tiny"), "Ready") == (
                "False",
                "PoolsNotReady",
            )

        wait_for(only_pools_lag, "Ready False with reason PoolsNotReady")
        router.add_worker("tiny-unified-0")
        wait_for(lambda: "unified 1/2 registered" in message("PoolsReady"), "1/2")
        router.add_worker("tiny-unified-1")
        md_ready = wait_for(
            lambda: (
                (m := get(bed, ns, "modeldeployment", "tiny"))
                and condition(m, "Ready")[0] == "True"
                and m
            ),
            "Ready=True",
        )
        assert md_ready["status"]["ready"] == "1/1"
        assert md_ready["status"]["pools"]["unified"]["registeredWorkers"] == 2
        bed.kubectl(
            "wait", "-n", ns, "--for=condition=Ready", "modeldeployment/tiny", "--timeout=5s"
        )
        printed = bed.kubectl("get", "-n", ns, "modeldeployments").stdout.split("\n")
        assert printed[0].split()[:5] == ["NAME", "MODEL", "READY", "ENDPOINT", "STATUS"]
        assert printed[1].split()[:3] == ["tiny", "tiny-llama", "1/1"]
        assert printed[1].split()[4] == "DeploymentReady"

        router.remove_worker("tiny-unified-1")
        wait_for(lambda: "unified 1/2 registered" in message("PoolsReady"), "back to 1/2")
        assert condition(get(bed, ns, "modeldeployment", "tiny"), "Ready")[0] == "False"
        router.stop()
        wait_for(
            lambda: (
                condition(get(bed, ns, "modeldeployment", "tiny"), "Ready")
                == ("False", "RouterUnreachable")
            ),
            "RouterUnreachable",
        )
        assert "not answering" in message("RouterReady")
        printed = bed.kubectl("get", "-n", ns, "modeldeployments").stdout
        assert "RouterUnreachable" in printed and "0/1" in printed
    finally:
        router.stop()


def test_scaling_down_drains_the_chosen_worker_before_kuberay_removes_its_pod(
    kube_testbed: Any,
    kube_namespace: str,
    operator: OperatorProcess,
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    """`kubectl scale servingpool` down: the operator picks the youngest worker pod, drains
    its worker through the real router's admin API (on a cluster a worker's id is its pod's
    name), and only then lowers the worker group with that pod in `workersToDelete`."""
    bed, ns = kube_testbed, kube_namespace
    router = LoopbackRouter(
        tiny_model_dir, tmp_path, model_name="tiny-llama",
        workers=(("tiny-unified-0", "unified"), ("tiny-unified-1", "unified")),
    )  # fmt: skip
    try:
        # The router's admin token where the operator reads it (its own Secret would hold
        # another token, which this router would refuse).
        bed.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(admin_secret("tiny-admin")))
        md = yaml.safe_load((EXAMPLES / "tiny.yaml").read_text())
        md["spec"]["router"]["httpPort"] = router.http_port
        md["spec"]["router"]["auth"] = {"secretName": "tiny-admin"}
        bed.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(md))
        wait_for(lambda: ("RayCluster", "tiny") in names(bed, ns), "the RayCluster")
        for i in range(2):
            bed.kubectl("apply", "-f", "-", input=json.dumps(worker_pod(ns, "tiny", "unified", i)))
            time.sleep(1.1)  # creation times have one-second resolution: the youngest is -1
        bed.kubectl("scale", "-n", ns, "servingpool", "tiny-unified", "--replicas=1")

        def group() -> dict[str, Any]:
            groups = get(bed, ns, "raycluster", "tiny")["spec"]["workerGroupSpecs"]
            return dict(groups[0])

        wait_for(lambda: group()["replicas"] == 1, "the worker group lowered to 1")
        assert group()["scaleStrategy"] == {"workersToDelete": ["tiny-unified-1"]}
        draining = {w["id"]: w["draining"] for w in router.listed()}
        assert draining == {"tiny-unified-0": False, "tiny-unified-1": True}

        def drained_events() -> list[dict[str, Any]]:
            # Events are posted after the patch that lowers the group, not with it: poll.
            events = bed.kubectl(
                "get", "events", "-n", ns, "--field-selector", "involvedObject.name=tiny",
                "-o", "json",
            ).stdout  # fmt: skip
            return [e for e in json.loads(events)["items"] if e["reason"] == "Drained"]

        drained = wait_for(drained_events, "a Drained event")
        assert "tiny-unified-1" in drained[0]["message"]
    finally:
        router.stop()


def test_operator_identity_cannot_enumerate_secrets(
    kube_testbed: Any, operator_identity: tuple[str, str, Path]
) -> None:
    namespace, account, _ = operator_identity
    who = f"system:serviceaccount:{namespace}:{account}"

    def can(verb: str, resource: str) -> bool:
        proc = kube_testbed.kubectl("auth", "can-i", verb, resource, "--as", who, "-A", check=False)
        return bool(proc.stdout.strip() == "yes")

    # It issues one credentials Secret per deployment and reads it back by name; it can never
    # list or watch Secrets (enumerate the cluster's credentials).
    assert not can("list", "secrets") and not can("watch", "secrets")
    assert can("create", "secrets")
    assert not can("delete", "namespaces") and not can("create", "customresourcedefinitions")
    assert not can("create", "pods") and not can("delete", "modeldeployments.mainsail.dev")
    assert can("create", "rayclusters.ray.io") and can(
        "patch", "modeldeployments.mainsail.dev/status"
    )
    proc = kube_testbed.kubectl(
        "--kubeconfig", str(operator_identity[2]), "get", "secrets", "-n", namespace, check=False
    )
    assert proc.returncode != 0 and "forbidden" in proc.stderr
