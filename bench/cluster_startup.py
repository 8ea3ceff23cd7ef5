"""The cluster path's start-up figures on the test bed's node: `kubectl apply` -> Ready and ->
first token, worker pod start -> worker registered, and `kubectl scale` -> new worker serving.

Starts a single-node cluster with KubeRay (tests/support/node.py, as root), imports the four
images of the current sources (`deploy/images/build.py` must have built them), installs the
chart once, then deploys deploy/examples/tiny.yaml (one worker, CPU request lowered to fit two
cores) several times, each in its own namespace: first with cold images (the router, worker and
cache images imported into the node's containerd inside the measured time, as a pull would be),
then `--warm-runs` times with them already there; each run also scales the pool 1 -> 2. Prints
every run and the warm medians. Figures for docs/benchmarks.md; never asserted in tests.
Usage (as root): `flock /work/wt/node.lock python bench/cluster_startup.py [--warm-runs 3]`.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from support.chart_images import helm_image_values  # noqa: E402
from support.node import Node, start_node, support_problem  # noqa: E402

NAMES = {"operator": "operator", "router": "router", "worker": "worker", "redis": "cache"}


def _images() -> dict[str, dict[str, Any]]:
    out = {}
    for name in NAMES:
        proc = subprocess.run(
            [sys.executable, str(ROOT / "deploy/images/build.py"), "--print", name],
            capture_output=True, text=True,
        )  # fmt: skip
        if proc.returncode != 0:
            raise SystemExit(
                f"image {name} of the current sources is not built: run deploy/images/build.py"
            )
        tar = Path(proc.stdout.strip().splitlines()[-1])
        out[name] = json.loads(tar.with_suffix(".json").read_text())
    return out


def _credentials(node: Node, ns: str) -> tuple[str, str]:
    """(a client API key, the admin token) from the Secret the operator issued."""
    out = node.kubectl("get", "secret", "-n", ns, "tiny-worker-credential", "-o", "json").stdout
    data = {k: base64.b64decode(v).decode() for k, v in json.loads(out)["data"].items()}
    return data["apiKeys"].split(",")[0].strip(), data["adminToken"].strip()


def _registered(node: Node, ip: str, admin: str) -> set[str]:
    def get() -> set[str]:
        request = urllib.request.Request(
            f"http://{ip}:8000/workers", headers={"Authorization": f"Bearer {admin}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as resp:
                return {w["id"] for w in json.loads(resp.read())["data"]}
        except OSError:
            return set()

    return node.in_netns(get, timeout=30)


def _first_token(base: str, api_key: str) -> None:
    import openai

    client = openai.OpenAI(base_url=base, api_key=api_key, max_retries=0, timeout=600)
    stream = client.completions.create(
        model="tiny-llama", prompt="Hello", max_tokens=4, stream=True, temperature=0
    )
    next(iter(stream))


def _pod_started(node: Node, ns: str, pod: str) -> float:
    """Seconds since the pod's container started, from the kubelet's status."""
    info = json.loads(node.kubectl("get", "pod", "-n", ns, pod, "-o", "json").stdout)
    started = info["status"]["containerStatuses"][0]["state"]["running"]["startedAt"]
    when = datetime.datetime.fromisoformat(started.replace("Z", "+00:00"))
    return (datetime.datetime.now(datetime.UTC) - when).total_seconds()


def _one(node: Node, ns: str, images: dict[str, dict[str, Any]] | None) -> dict[str, float]:
    """One deployment in its own namespace: (import the images,) apply tiny with one worker,
    Ready, first token; scale to 2, the new worker registered; then delete the namespace."""
    import yaml

    figures: dict[str, float] = {}
    md = yaml.safe_load((ROOT / "deploy/examples/tiny.yaml").read_text())
    md["spec"]["pools"]["unified"]["replicas"] = 1
    md["spec"]["pools"]["unified"]["resources"] = {"cpu": "250m", "memory": "3Gi"}
    node.create_namespace(ns)
    t0 = time.monotonic()
    if images is not None:  # cold: the images are not on the node yet (a pull, in effect)
        for info in images.values():
            node.ensure_image(info["tar"])
        figures["import images (s)"] = time.monotonic() - t0
    node.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(md))
    node.kubectl("wait", "-n", ns, "--for=condition=Ready", "modeldeployment/tiny",
                 "--timeout=1200s", timeout=1230)  # fmt: skip
    figures["apply -> Ready (s)"] = time.monotonic() - t0
    ip = node.service_ip(ns, "tiny-router")
    key, admin = _credentials(node, ns)
    node.in_netns(_first_token, f"http://{ip}:8000/v1", key, timeout=600)
    figures["apply -> first token (s)"] = time.monotonic() - t0
    before = _registered(node, ip, admin)
    t0 = time.monotonic()
    node.kubectl("scale", "-n", ns, "servingpool", "tiny-unified", "--replicas=2")
    node.wait_for(lambda: len(_registered(node, ip, admin)) == 2, 900, "a second worker")
    figures["scale-up -> new worker registered (s)"] = time.monotonic() - t0
    (new,) = _registered(node, ip, admin) - before
    # Read right after the registration was seen (1 s polling): at most ~1 s high.
    figures["pod container start -> registered (s)"] = _pod_started(node, ns, new)
    node.in_netns(_first_token, f"http://{ip}:8000/v1", key, timeout=600)
    node.kubectl("delete", "namespace", ns, "--timeout=300s", timeout=330)
    return figures


def run(node: Node, warm_runs: int) -> list[tuple[str, dict[str, float]]]:
    """The chart installed once (watching every namespace); one cold deployment, then
    `warm_runs` more with the images already on the node."""
    images = _images()
    node.create_namespace("mainsail-system")
    # The operator's image must be on the node before the chart can start: imported here, not
    # counted (the cold run imports the others: router, worker, cache).
    node.ensure_image(images["operator"]["tar"])
    values = helm_image_values(images)
    node.helm("install", "mainsail", str(ROOT / "charts/mainsail"), "-n", "mainsail-system",
              *values, "--wait", "--timeout", "10m", timeout=900)  # fmt: skip
    cold = {k: v for k, v in images.items() if k != "operator"}
    runs = [("cold", _one(node, "bench-cold", cold))]
    _report(*runs[-1])
    for i in range(warm_runs):
        runs.append((f"warm {i + 1}", _one(node, f"bench-warm-{i + 1}", None)))
        _report(*runs[-1])
    return runs


def _report(label: str, figures: dict[str, float]) -> None:
    """One run's figures as soon as it ends (a long run interrupted still leaves them)."""
    cells = ", ".join(f"{name} {value:.1f}" for name, value in figures.items())
    print(f"{label}: {cells}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--warm-runs", type=int, default=3, help="deployments after the cold one")
    args = parser.parse_args()
    if problem := support_problem():
        print(f"cannot run a node here: {problem}", file=sys.stderr)
        return 2
    node = start_node(kuberay=True)
    try:
        runs = run(node, args.warm_runs)
    finally:
        node.stop()
    names = list(dict.fromkeys(k for _, f in runs for k in f))
    print(f"{'phase':42s} " + " ".join(f"{label:>8s}" for label, _ in runs) + "  warm median")
    for name in names:
        cells = [f"{f[name]:8.1f}" if name in f else f"{'-':>8s}" for _, f in runs]
        warm = [f[name] for label, f in runs if label != "cold" and name in f]
        median = f"{statistics.median(warm):8.1f}" if warm else ""
        print(f"{name:42s} " + " ".join(cells) + f"  {median}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
