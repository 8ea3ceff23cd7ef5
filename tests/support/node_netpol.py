"""NetworkPolicy enforcement on the test bed's node, for the tests that need it.

Why apart: the bridge CNI enforces no NetworkPolicy, so a test that claims something works
*under the operator's policies* must run an enforcer: kube-router's firewall controller alone
(`deploy/testbed/ensure-netpol.sh`: iptables + ipset inside the node's own network namespace),
started for the test's duration and cleaned up after, so the rest of the session runs on the
unenforced bridge as before. kube-router admits traffic from the node itself to its pods
(kubelet probes, the tests' own clients), as it does on a real cluster.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.node import Node
from support.node_config import ROOT

HEALTH_PORT = 20244
START_TIMEOUT_S = 60.0


def netpol_binary() -> Path:
    """kube-router, built by ensure-netpol.sh. When it is not built the calling test is
    skipped, but fails where the environment variable CI is "true": CI builds it, so a
    missing binary there is a broken build, and a skip would silently drop the only tests
    that show the operator's NetworkPolicies are enforced."""
    proc = subprocess.run(
        [str(ROOT / "deploy/testbed/ensure-netpol.sh"), "--check"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    if proc.returncode != 0:
        missing = "kube-router not built (deploy/testbed/ensure-netpol.sh)"
        if os.environ.get("CI") == "true":
            pytest.fail(missing)
        pytest.skip(missing)
    return Path(proc.stdout.strip().splitlines()[-1]) / "bin" / "kube-router"


@contextlib.contextmanager
def enforcing_network_policies(node: Node, log: Path) -> Iterator[Node]:
    """kube-router's firewall controller running in ``node``'s namespace (log at ``log``);
    stopped by its own pid and its rules removed on exit."""
    binary = netpol_binary()
    argv = [
        str(binary), f"--kubeconfig={node.kubeconfig}", "--run-firewall=true",
        "--run-router=false", "--run-service-proxy=false", "--hostname-override=mainsail-node",
        "--service-cluster-ip-range=10.96.0.0/16", "--metrics-port=0",
        f"--health-port={HEALTH_PORT}", "--iptables-sync-period=5s", "--v=1",
    ]  # fmt: skip
    with log.open("ab") as out:
        proc = subprocess.Popen(
            node.netns_argv(argv), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"kube-router exited:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(Exception):
                if node.http_get(f"http://127.0.0.1:{HEALTH_PORT}/healthz", timeout=2)[0] == 200:
                    break
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        yield node
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        # Its chains and ipsets live in the node's namespace: remove them.
        node.run_in_netns([str(binary), "--cleanup-config"], check=False, timeout=60)


def enforced_policies(node: Node) -> set[str]:
    """`namespace/name` of every NetworkPolicy kube-router has programmed rules for (its rule
    comments say "... selected by policy name <name> namespace <namespace>")."""
    rules = node.run_in_netns(["iptables-save", "-t", "filter"], timeout=30).stdout
    return {f"{ns}/{name}" for name, ns in _POLICY_COMMENT.findall(rules)}


_POLICY_COMMENT = re.compile(r"selected by policy name:? (\S+) namespace ([^\s\"]+)")
