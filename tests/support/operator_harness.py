"""Shared by the operator's cluster tests: a real operator process, its waits and lookups,
and a real router on loopback for the autoscaler. Imported as `support.operator_harness`
(pytest puts `tests/` on the path); the fixtures built on it live in
tests/integration/conftest.py.
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "deploy" / "examples"
KUBERAY_VERSION = "v1.5.0"  # the same as deploy/testbed/ensure-node.sh builds
KUBERAY_MODULE = "github.com/ray-project/kuberay/ray-operator"
WAIT_S = 30.0
LOOPBACK_ADMIN_TOKEN = "loopback-admin"
"""`LoopbackRouter`'s admin token unless ``env`` names another (a router without one refuses
its admin API); `admin_secret` puts it where the operator reads it."""


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

    def __init__(self, kubeconfig: Path, log: Path, namespaces: tuple[str, ...] = ()) -> None:
        self.kubeconfig, self.log = kubeconfig, log
        self.namespaces = namespaces  # empty: every namespace (the chart's default)
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
            # Each router replica from the router-peers EndpointSlices a test writes (no
            # controller manager here): its address is a pod IP nobody dials, its http port
            # says which loopback router it is.
            "MAINSAIL_OPERATOR_ROUTER_POD_METRICS_URL": "http://127.0.0.1:{port}/metrics",
            "MAINSAIL_OPERATOR_ROUTER_ADMIN_URL": "http://127.0.0.1:{port}",
        }
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mainsail.operator", f"--liveness=http://127.0.0.1:{port}/healthz",
                 *(f"--namespace={ns}" for ns in self.namespaces)],
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

    def kill(self) -> None:
        """SIGKILL, as a crash or a force-deleted pod ends it: no cleanup handlers run."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=15)
        self.proc = None

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


def without_deployment_writes(rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The chart's operator rules with writes of apps/v1 Deployments taken away (reads kept:
    the operator still lists and watches them), so its every pass stops at the router
    Deployment, late in the apply order (`mainsail.operator.desired`)."""
    out = []
    for rule in rules:
        if rule["apiGroups"] == ["apps"] and "deployments" in rule["resources"]:
            rest = [r for r in rule["resources"] if r != "deployments"]
            out.append({**rule, "resources": rest})
            out.append({"apiGroups": ["apps"], "resources": ["deployments"],
                        "verbs": ["get", "list", "watch"]})  # fmt: skip
        else:
            out.append(rule)
    assert out != rules, "the chart's rules no longer grant writes of Deployments"
    return out


def get(bed: Any, ns: str, kind: str, name: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(bed.kubectl("get", "-n", ns, kind, name, "-o", "json").stdout)
    return out


def names(bed: Any, ns: str) -> set[tuple[str, str]]:
    kinds = (
        "networkpolicies,configmaps,services,deployments,statefulsets,rayclusters,servingpools,"
        "poddisruptionbudgets"
    )
    items = json.loads(
        bed.kubectl("get", "-n", ns, kinds, "-l", "mainsail.dev/deployment", "-o", "json").stdout
    )["items"]
    found = {(i["kind"], i["metadata"]["name"]) for i in items}
    secrets = json.loads(
        bed.kubectl(
            "get", "-n", ns, "secrets", "-l", "mainsail.dev/deployment", "-o", "json"
        ).stdout
    )["items"]
    return found | {(i["kind"], i["metadata"]["name"]) for i in secrets}


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


def worker_pod(ns: str, deployment: str, role: str, index: int) -> dict[str, Any]:
    """A pod labelled as the operator labels a deployment's Ray worker pods, named as KubeRay
    names them (`<deployment>-<role>-<index>`; on a cluster a worker's id is its pod's name).
    Nothing runs it on this API-server-only bed: it stands for the pod a scale-down removes."""
    labels = {
        "app.kubernetes.io/managed-by": "mainsail-operator",
        "app.kubernetes.io/component": "worker",
        "app.kubernetes.io/instance": deployment,
        "mainsail.dev/deployment": deployment,
        "mainsail.dev/role": role,
    }
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": f"{deployment}-{role}-{index}", "namespace": ns, "labels": labels},
        "spec": {"containers": [{"name": "w", "image": "example.invalid/worker:0"}]},
    }  # fmt: skip


def condition(md: dict[str, Any], kind: str) -> tuple[str, str]:
    found = next(c for c in md["status"]["conditions"] if c["type"] == kind)
    return found["status"], found["reason"]


def admin_secret(name: str, token: str = LOOPBACK_ADMIN_TOKEN) -> dict[str, Any]:
    """A Secret holding the router's admin token: name it in `spec.router.auth.secretName` and
    the operator drains a `LoopbackRouter`'s workers with the token that router has."""
    import base64

    return {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
        "data": {"adminToken": base64.b64encode(token.encode()).decode()},
    }  # fmt: skip


class LoopbackRouter:
    """A real `python -m mainsail.router` on loopback (``env``: extra environment, e.g. its
    admin token, `LOOPBACK_ADMIN_TOKEN` by default, or its worker token, generated by
    default) and workers registered with it by the real `Registrar`, heartbeating whatever
    load the test sets (nothing is served). Workers come and go with `add_worker` /
    `remove_worker` (which deregisters, as a stopping worker does); ``workers=()`` leaves the
    fleet to real workers, which need `worker` (in process) or `worker_env` (a process).
    ``config`` overrides `RouterConfig` fields; the router logs to ``tmp/router.log``."""

    def __init__(
        self,
        model_dir: Path,
        tmp: Path,
        *,
        model_name: str = "tiny-auto",
        workers: tuple[tuple[str, str], ...] = (("w-0", "unified"),),
        env: dict[str, str] | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        from mainsail.router.settings import RouterConfig
        from mainsail.spec.router_auth import ADMIN_TOKEN_ENV
        from mainsail.spec.worker_auth import WORKER_TOKEN_ENV, WorkerCredential

        self.http_port = _free_port()
        # The worker plane's token (a router without one refuses every registration).
        env = {WORKER_TOKEN_ENV: secrets.token_hex(32), **(env or {})}
        self.worker = WorkerCredential.from_env(env)
        self.worker_env = {WORKER_TOKEN_ENV: self.worker.token or ""}
        self.model_name = model_name
        settings = RouterConfig(
            model_name=model_name,
            model_dir=model_dir,
            http_port=self.http_port,
            grpc_port=0,
            fleet_port=0,
            **(config or {}),
        )
        (tmp / "router.json").write_text(settings.model_dump_json())
        ready = tmp / "router.ready"
        with (tmp / "router.log").open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mainsail.router", "--config", str(tmp / "router.json"),
                 "--ready-file", str(ready)],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, ADMIN_TOKEN_ENV: LOOPBACK_ADMIN_TOKEN, **env},
            )  # fmt: skip
        ports = wait_for(lambda: ready.exists() and json.loads(ready.read_text()), "router")
        self.kv = settings.kv_hash
        token = env.get(ADMIN_TOKEN_ENV, LOOPBACK_ADMIN_TOKEN)
        self.admin = {"Authorization": f"Bearer {token}"}  # opens its admin API
        self.grpc = f"127.0.0.1:{ports['grpc_port']}"
        self.fleet = f"127.0.0.1:{ports['fleet_port']}"  # where workers register
        self.load = {"running": 0, "waiting": 0, "kv_blocks_used": 0, "kv_blocks_total": 1000}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._tasks: dict[str, Any] = {}
        for worker_id, role in workers:
            self.add_worker(worker_id, role)

    def listed(self) -> list[dict[str, Any]]:
        """The router's `GET /workers` (an admin call)."""
        url = f"http://127.0.0.1:{self.http_port}/workers"
        with urllib.request.urlopen(
            urllib.request.Request(url, headers=self.admin), timeout=10
        ) as r:
            data: list[dict[str, Any]] = json.loads(r.read())["data"]
        return data

    def add_worker(self, worker_id: str, role: str = "unified") -> None:
        """Register one more worker (it heartbeats `self.load`)."""
        from mainsail.proto.v1 import mainsail_pb2 as pb
        from mainsail.workers.registration import Registrar

        info = pb.WorkerInfo(
            worker_id=worker_id, address="127.0.0.1:1", role=role, model=self.model_name,
            max_model_len=2048, max_num_seqs=8,
            kv_hash=pb.KVHashParams(
                block_size=self.kv.block_size, hash_seed=self.kv.hash_seed,
                algorithm=self.kv.algorithm,
            ),
        )  # fmt: skip

        def snapshot() -> pb.LoadSnapshot:
            load = dict(self.load)
            return pb.LoadSnapshot(
                worker_id=worker_id,
                running=load["running"],
                waiting=load["waiting"],
                kv_blocks_used=load["kv_blocks_used"],
                kv_blocks_total=load["kv_blocks_total"],
            )

        registrar = Registrar(self.fleet, info, snapshot, credential=self.worker)

        async def start() -> Any:
            return asyncio.ensure_future(registrar.run()), registrar

        self._tasks[worker_id] = asyncio.run_coroutine_threadsafe(start(), self._loop).result(10)

    def remove_worker(self, worker_id: str) -> None:
        """Stop heartbeating and deregister, as a stopping worker does."""
        task, registrar = self._tasks.pop(worker_id)

        async def stop() -> None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await registrar.deregister()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)

    def stop(self) -> None:
        for worker_id in list(self._tasks):
            with contextlib.suppress(Exception):
                self.remove_worker(worker_id)
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=15)
