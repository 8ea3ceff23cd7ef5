"""The test bed's node: start to Ready, a two-pod Deployment to rolled out, and teardown.

Starts and stops `--runs` single-node clusters one after another (tests/support/node.py, as
root), each time deploying two busybox pods, and prints each phase's median and max. Figures
for docs/testbed.md; never asserted in tests. Usage (as root):
`python bench/node_start.py [--runs 3] [--kuberay] [--image TAR ...]`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.node import Binaries, start_node, support_problem

DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: bench, namespace: default}
spec:
  replicas: 2
  selector: {matchLabels: {app: bench}}
  template:
    metadata: {labels: {app: bench}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - {name: c, image: mainsail/busybox:testbed, imagePullPolicy: Never, command: [sleep, "3600"]}
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--kuberay", action="store_true")
    parser.add_argument("--image", action="append", default=[], type=Path)
    args = parser.parse_args()
    if problem := support_problem():
        print(f"cannot run a node here: {problem}", file=sys.stderr)
        return 2
    binaries = Binaries.ensure()
    phases: dict[str, list[float]] = {"start to Ready": [], "2 pods rolled out": [], "teardown": []}
    for _ in range(max(1, args.runs)):
        t0 = time.monotonic()
        node = start_node(images=args.image, kuberay=args.kuberay, binaries=binaries)
        try:
            phases["start to Ready"].append(time.monotonic() - t0)
            t1 = time.monotonic()
            node.kubectl("apply", "-f", "-", input=DEPLOYMENT)
            node.kubectl("rollout", "status", "deployment/bench", "--timeout=120s", timeout=130)
            phases["2 pods rolled out"].append(time.monotonic() - t1)
        finally:
            t2 = time.monotonic()
            node.stop()
            phases["teardown"].append(time.monotonic() - t2)
    print(f"node test bed, {args.runs} runs, kuberay={args.kuberay}, images={len(args.image)}")
    print(f"{'phase':<20} {'median s':>9} {'max s':>7}")
    for name, values in phases.items():
        print(f"{name:<20} {statistics.median(values):>9.1f} {max(values):>7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
