"""How fast the operator turns `kubectl apply` into children, at 1 and at 200 deployments.

Measures, against an existing API server (the test bed or any cluster; KUBECONFIG):
time from `kubectl apply` of N ModelDeployments (the `tiny` shape, 8 children each: config,
cache Service + StatefulSet, ServingPool, RayCluster, router Service + Deployment) to all
N*8 children existing, and the operator's resident memory once they do. The operator runs as
a subprocess started here (`python -m mainsail.operator`), so the figure includes its start-up
listing. Prints one line per N and the medians over --repeat runs.

    KUBECONFIG=... python bench/operator_scale.py --counts 1 200 --repeat 3

The RayCluster CRD must be installed (the integration fixture installs KubeRay's).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHILDREN_PER_DEPLOYMENT = (
    7  # ConfigMap, 2 Services, StatefulSet, ServingPool, RayCluster, Deployment
)
KINDS = "configmaps,services,statefulsets,servingpools,rayclusters,deployments"


def kubectl(*args: str, input: str | None = None) -> str:
    proc = subprocess.run(
        ["kubectl", *args], input=input, capture_output=True, text=True, timeout=300, check=True
    )
    return proc.stdout


def manifest(n: int) -> str:
    docs = []
    for i in range(n):
        docs.append(
            {
                "apiVersion": "mainsail.dev/v1alpha1",
                "kind": "ModelDeployment",
                "metadata": {"name": f"bench-{i}"},
                "spec": {"model": {"name": f"m{i}", "generate": "llama"}, "pools": {"unified": {}}},
            }
        )
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": docs})


def count_children(namespace: str) -> int:
    out = kubectl("get", "-n", namespace, KINDS, "-l", "mainsail.dev/deployment", "-o", "name")
    return len(out.split())


def wait_alive(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as resp:
            if resp.status == 200:
                return
        time.sleep(0.1)
    raise RuntimeError("operator did not come up")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_once(n: int, timeout_s: float) -> tuple[float, float]:
    namespace = f"bench-{n}-{secrets.token_hex(3)}"
    kubectl("create", "namespace", namespace)
    env = {**os.environ, "MAINSAIL_OPERATOR_RESYNC_SECONDS": "60"}
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    liveness = f"http://127.0.0.1:{port}/healthz"
    command = [sys.executable, "-m", "mainsail.operator", "-n", namespace, f"--liveness={liveness}"]
    log = open(os.environ.get("MAINSAIL_BENCH_LOG", os.devnull), "ab")  # noqa: SIM115
    operator = subprocess.Popen(
        command,
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        wait_alive(liveness, operator)  # start-up (imports, login) is not part of the figure
        time.sleep(1.0)  # let the watch streams open
        start = time.monotonic()
        kubectl("apply", "-n", namespace, "-f", "-", input=manifest(n))
        want = n * CHILDREN_PER_DEPLOYMENT
        while count_children(namespace) < want:
            if time.monotonic() - start > timeout_s:
                raise TimeoutError(f"{n} deployments: children incomplete after {timeout_s}s")
            time.sleep(0.2)
        elapsed = time.monotonic() - start
        return elapsed, rss_mib(operator.pid)
    finally:
        os.killpg(operator.pid, signal.SIGTERM)
        operator.wait(timeout=30)
        log.close()
        kubectl("delete", "namespace", namespace, "--wait=false")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 200])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "deploy/crds"))
    print(f"{'deployments':>11} {'children':>8} {'median_s':>9} {'per_dep_ms':>10} {'rss_MiB':>8}")
    for n in args.counts:
        runs = [run_once(n, args.timeout) for _ in range(args.repeat)]
        seconds = statistics.median(r[0] for r in runs)
        rss = statistics.median(r[1] for r in runs)
        print(
            f"{n:>11} {n * CHILDREN_PER_DEPLOYMENT:>8} {seconds:>9.2f} "
            f"{1000 * seconds / n:>10.1f} {rss:>8.0f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
