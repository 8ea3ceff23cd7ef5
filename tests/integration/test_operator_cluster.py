"""The operator against a real API server, running as its chart's ServiceAccount (not admin).

One operator subprocess serves the whole module (cluster-wide, like the chart's default); each
test works in its own namespace. There is no controller-manager or KubeRay here, so nothing
creates pods: readiness is shown by writing pod and Deployment status as an admin would see it
from the kubelet. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "deploy" / "examples"
KUBERAY_VERSION = "v1.4.2"
KUBERAY_MODULE = "github.com/ray-project/kuberay/ray-operator"
WAIT_S = 30.0


def wait_for(probe: Callable[[], Any], what: str, timeout: float = WAIT_S) -> Any:
    """Poll `probe` until it returns a truthy value; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except (subprocess.CalledProcessError, KeyError, IndexError, TypeError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def kuberay_crd_file() -> Path:
    """The real RayCluster CRD from KubeRay's Go module (cached; offline once fetched)."""
    cache = Path(os.environ.get("MAINSAIL_CACHE", Path.home() / ".cache" / "mainsail"))
    target = cache / "kuberay" / KUBERAY_VERSION / "ray.io_rayclusters.yaml"
    if target.exists():
        return target
    go = shutil.which("go")
    if go is None:
        pytest.skip("RayCluster CRD not cached and no Go toolchain to fetch it")
    proc = subprocess.run(
        [go, "mod", "download", "-json", f"{KUBERAY_MODULE}@{KUBERAY_VERSION}"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if proc.returncode != 0:
        pytest.skip(f"cannot fetch {KUBERAY_MODULE}: {proc.stderr[-500:]}")
    source = Path(json.loads(proc.stdout)["Dir"]) / "config/crd/bases/ray.io_rayclusters.yaml"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return target


def install_crds(bed: Any) -> None:
    """Our CRDs plus KubeRay's RayCluster, server-side applied and established."""
    for source in (ROOT / "deploy/crds", kuberay_crd_file()):
        bed.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(source))
    for name in (
        "modeldeployments.mainsail.dev",
        "servingpools.mainsail.dev",
        "rayclusters.ray.io",
    ):
        wait_for(functools.partial(established, bed, name), f"CRD {name} established")


def established(bed: Any, crd: str) -> bool:
    """`kubectl wait` errors on a CRD whose status is not written yet, so poll instead."""
    path = '{.status.conditions[?(@.type=="Established")].status}'
    return bool(bed.kubectl("get", "crd", crd, "-o", f"jsonpath={path}").stdout == "True")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class OperatorProcess:
    """`python -m mainsail.operator` under a given kubeconfig; restartable."""

    def __init__(self, kubeconfig: Path, log: Path) -> None:
        self.kubeconfig, self.log = kubeconfig, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        port = _free_port()
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "MAINSAIL_OPERATOR_RESYNC_SECONDS": "3",
            # The autoscaler reads each deployment's router on loopback, at the deployment's
            # router.httpPort (there are no Services to resolve here).
            "MAINSAIL_OPERATOR_AUTOSCALE_SECONDS": "1",
            "MAINSAIL_OPERATOR_ROUTER_METRICS_URL": "http://127.0.0.1:{port}/metrics",
        }
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mainsail.operator", f"--liveness=http://127.0.0.1:{port}/healthz"],
                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        url = f"http://127.0.0.1:{port}/healthz"

        def healthy() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"operator exited:\n{self.log.read_text()[-3000:]}")
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as resp:
                return bool(resp.status == 200)
            return False

        wait_for(healthy, "operator liveness")

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)
        self.proc = None


@pytest.fixture(scope="module")
def operator_identity(
    kube_testbed: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str, Path]]:
    """The chart's ServiceAccount and RBAC, applied; a kubeconfig carrying that SA's token."""
    install_crds(kube_testbed)
    suffix = secrets.token_hex(3)
    namespace, release = f"mainsail-op-{suffix}", f"op-{suffix}"
    kube_testbed.kubectl("create", "namespace", namespace)
    helm = str(kube_testbed.bin_dir / "helm")
    rendered = subprocess.run(
        [helm, "template", release, str(ROOT / "charts/mainsail"), "--namespace", namespace,
         "--show-only", "templates/serviceaccount.yaml", "--show-only", "templates/rbac.yaml"],
        capture_output=True, text=True, check=True, timeout=60, env=kube_testbed.env,
    ).stdout  # fmt: skip
    kube_testbed.kubectl("apply", "-n", namespace, "-f", "-", input=rendered)
    account = f"{release}-mainsail-operator"
    token = kube_testbed.kubectl(
        "create", "token", account, "-n", namespace, "--duration=2h"
    ).stdout.strip()
    admin = yaml.safe_load(kube_testbed.kubeconfig.read_text())
    admin["users"] = [{"name": "operator", "user": {"token": token}}]
    admin["contexts"][0]["context"]["user"] = "operator"
    path = tmp_path_factory.mktemp("operator") / "kubeconfig"
    path.write_text(yaml.safe_dump(admin))
    path.chmod(0o600)
    yield namespace, account, path
    kube_testbed.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


@pytest.fixture(scope="module")
def operator(
    operator_identity: tuple[str, str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    log = tmp_path_factory.mktemp("operator-log") / "operator.log"
    process = OperatorProcess(operator_identity[2], log)
    process.start()
    yield process
    process.stop()
    assert "Traceback" not in log.read_text(), log.read_text()[-4000:]


def get(bed: Any, ns: str, kind: str, name: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(bed.kubectl("get", "-n", ns, kind, name, "-o", "json").stdout)
    return out


def names(bed: Any, ns: str) -> set[tuple[str, str]]:
    kinds = "configmaps,services,deployments,statefulsets,rayclusters,servingpools"
    items = json.loads(
        bed.kubectl("get", "-n", ns, kinds, "-l", "mainsail.dev/deployment", "-o", "json").stdout
    )["items"]
    return {(i["kind"], i["metadata"]["name"]) for i in items}


def expected_children(example: Path, ns: str) -> set[tuple[str, str]]:
    from mainsail.operator.desired import desired_children
    from mainsail.operator.naming import Owner
    from mainsail.operator.settings import OperatorSettings
    from mainsail.spec.deployment import load_model_deployment

    md = load_model_deployment(yaml.safe_load(example.read_text()))
    owner = Owner(md.metadata.name, ns, "uid")
    return {
        (c["kind"], c["metadata"]["name"])
        for c in desired_children(owner, md.spec, OperatorSettings())
    }


def apply_example(bed: Any, ns: str, example: Path) -> dict[str, Any]:
    bed.kubectl("apply", "-n", ns, "-f", str(example))
    want = expected_children(example, ns)
    wait_for(lambda: names(bed, ns) == want, f"children of {example.name}")
    name = yaml.safe_load(example.read_text())["metadata"]["name"]
    md: dict[str, Any] = wait_for(
        lambda: (m := get(bed, ns, "modeldeployment", name)).get("status", {}).get("ready") and m,
        "status",
    )
    return md


def condition(md: dict[str, Any], kind: str) -> tuple[str, str]:
    found = next(c for c in md["status"]["conditions"] if c["type"] == kind)
    return found["status"], found["reason"]


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
    assert printed.split()[:4] == ["NAME", "MODEL", "READY", "ENDPOINT"]


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
    before = {n: get(bed, ns, *n)["metadata"]["resourceVersion"] for n in names(bed, ns)}
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


def _ready_pod(ns: str, role: str, index: int) -> dict[str, Any]:
    labels = {
        "app.kubernetes.io/managed-by": "mainsail-operator",
        "app.kubernetes.io/component": "worker",
        "app.kubernetes.io/instance": "tiny",
        "mainsail.dev/deployment": "tiny",
        "mainsail.dev/role": role,
    }
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": f"tiny-{role}-{index}", "namespace": ns, "labels": labels},
        "spec": {"containers": [{"name": "w", "image": "example.invalid/worker:0"}]},
    }  # fmt: skip


def test_status_aggregates_worker_and_router_readiness(
    kube_testbed: Any, kube_namespace: str, operator: OperatorProcess
) -> None:
    bed, ns = kube_testbed, kube_namespace
    md = apply_example(bed, ns, EXAMPLES / "tiny.yaml")
    replicas = md["status"]["pools"]["unified"]["replicas"]
    ready = {"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}
    for i in range(replicas):
        bed.kubectl("apply", "-f", "-", input=json.dumps(_ready_pod(ns, "unified", i)))
        bed.kubectl(
            "patch",
            "-n",
            ns,
            "pod",
            f"tiny-unified-{i}",
            "--subresource=status",
            "--type=merge",
            "-p",
            json.dumps(ready),
        )
    router = get(bed, ns, "deployment", "tiny-router")
    status = {
        "status": {
            "observedGeneration": router["metadata"]["generation"],
            "replicas": 1,
            "readyReplicas": router["spec"]["replicas"],
        }
    }
    bed.kubectl(
        "patch",
        "-n",
        ns,
        "deployment",
        "tiny-router",
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(status),
    )
    for kind in ("statefulset",):
        if ("StatefulSet", "tiny-cache") in names(bed, ns):
            sts = get(bed, ns, kind, "tiny-cache")
            sts_status = {
                "status": {
                    "observedGeneration": sts["metadata"]["generation"],
                    "replicas": 1,
                    "readyReplicas": sts["spec"]["replicas"],
                }
            }
            bed.kubectl(
                "patch",
                "-n",
                ns,
                kind,
                "tiny-cache",
                "--subresource=status",
                "--type=merge",
                "-p",
                json.dumps(sts_status),
            )
    md = wait_for(
        lambda: (
            (m := get(bed, ns, "modeldeployment", "tiny"))
            and condition(m, "Ready")[0] == "True"
            and m
        ),
        "Ready=True",
    )
    assert md["status"]["ready"] == "1/1"
    assert condition(md, "Ready") == ("True", "DeploymentReady")
    pool = get(bed, ns, "servingpool", "tiny-unified")
    assert pool["status"]["readyReplicas"] == replicas
    bed.kubectl("wait", "-n", ns, "--for=condition=Ready", "modeldeployment/tiny", "--timeout=5s")


def test_operator_identity_cannot_touch_secrets(
    kube_testbed: Any, operator_identity: tuple[str, str, Path]
) -> None:
    namespace, account, _ = operator_identity
    who = f"system:serviceaccount:{namespace}:{account}"

    def can(verb: str, resource: str) -> bool:
        proc = kube_testbed.kubectl("auth", "can-i", verb, resource, "--as", who, "-A", check=False)
        return bool(proc.stdout.strip() == "yes")

    assert not can("get", "secrets") and not can("list", "secrets") and not can("create", "secrets")
    assert not can("delete", "namespaces") and not can("create", "customresourcedefinitions")
    assert not can("create", "pods") and not can("delete", "modeldeployments.mainsail.dev")
    assert can("create", "rayclusters.ray.io") and can(
        "patch", "modeldeployments.mainsail.dev/status"
    )
    proc = kube_testbed.kubectl(
        "--kubeconfig", str(operator_identity[2]), "get", "secrets", "-n", namespace, check=False
    )
    assert proc.returncode != 0 and "forbidden" in proc.stderr


class LoopbackRouter:
    """A real `python -m mainsail.router` on loopback and one worker registered with it by the
    real `Registrar`, heartbeating whatever load the test sets (nothing is served)."""

    def __init__(self, model_dir: Path, tmp: Path) -> None:
        from mainsail.router.settings import RouterConfig

        self.http_port = _free_port()
        config = RouterConfig(
            model_name="tiny-auto", model_dir=model_dir, http_port=self.http_port, grpc_port=0
        )
        (tmp / "router.json").write_text(config.model_dump_json())
        ready = tmp / "router.ready"
        with (tmp / "router.log").open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mainsail.router", "--config", str(tmp / "router.json"),
                 "--ready-file", str(ready)],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        ports = wait_for(lambda: ready.exists() and json.loads(ready.read_text()), "router")
        self.kv = config.kv_hash
        self.grpc = f"127.0.0.1:{ports['grpc_port']}"
        self.load = {"running": 0, "waiting": 0, "kv_blocks_used": 0, "kv_blocks_total": 1000}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._heartbeat, daemon=True)
        self._thread.start()

    def _heartbeat(self) -> None:
        from mainsail.proto.v1 import mainsail_pb2 as pb
        from mainsail.workers.registration import Registrar

        info = pb.WorkerInfo(
            worker_id="w-0", address="127.0.0.1:1", role="unified", model="tiny-auto",
            max_model_len=2048, max_num_seqs=8,
            kv_hash=pb.KVHashParams(
                block_size=self.kv.block_size, hash_seed=self.kv.hash_seed,
                algorithm=self.kv.algorithm,
            ),
        )  # fmt: skip

        def snapshot() -> pb.LoadSnapshot:
            load = dict(self.load)
            return pb.LoadSnapshot(
                worker_id="w-0",
                running=load["running"],
                waiting=load["waiting"],
                kv_blocks_used=load["kv_blocks_used"],
                kv_blocks_total=load["kv_blocks_total"],
            )

        registrar = Registrar(self.grpc, info, snapshot)

        async def run() -> None:
            task = asyncio.create_task(registrar.run())
            while not self._stop.is_set():
                await asyncio.sleep(0.1)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        asyncio.run(run())

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=15)


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
