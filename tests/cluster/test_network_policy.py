"""The operator's NetworkPolicies, enforced on the node: a pod outside the allowed selectors is
refused by the router's, the workers' and Redis' policies; the allowed pods get through.

The bridge CNI enforces no NetworkPolicy, so this module runs kube-router's firewall
controller alone (`support.node_netpol`: iptables + ipset inside the node's own network
namespace) for its duration, and cleans its rules up after. The policies are exactly
what `desired_network.network_policies` renders for a deployment `d`; the pods carry the
labels the operator gives a deployment's router, Ray worker and Redis pods (Python's
http.server on each policy's ports, in the small debian-python image: no 5 GB worker image),
plus a Prometheus-labelled pod and a stranger. Before the policies exist the stranger reaches
everything (the control). (Busybox's static `wget` crashes with SIGSEGV here, hence Python.)
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from support.node import Node
from support.node_netpol import enforcing_network_policies

from mainsail.operator.desired_network import network_policies
from mainsail.operator.naming import LABEL_COMPONENT, LABEL_DEPLOYMENT, Owner
from mainsail.operator.settings import OperatorSettings
from mainsail.spec.deployment import ModelDeploymentSpec
from mainsail.spec.network import PROMETHEUS_LABELS
from mainsail.spec.worker_metrics import WORKER_METRICS_PORT

pytestmark = pytest.mark.cluster

PYTHON = "mainsail/debian-python:testbed"  # in every session node (tests/cluster/conftest.py)
SPEC = ModelDeploymentSpec.model_validate({"model": {"name": "m", "generate": "llama"}})
ROUTER = SPEC.router
RAY_PORT = 10001  # any port of a Ray pod other than metrics (GCS, object transfer, actors)
REDIS_PORT = 6379
SERVES = {
    "router": (ROUTER.http_port, ROUTER.grpc_port, ROUTER.fleet_port),
    "worker": (RAY_PORT, WORKER_METRICS_PORT),
    "cache": (REDIS_PORT,),
}
ENFORCE_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def enforcer(node_cluster: Node, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """kube-router's firewall controller running in the node's namespace for this module."""
    log = tmp_path_factory.mktemp("kube-router") / "kube-router.log"
    with enforcing_network_policies(node_cluster, log) as node:
        yield node


def _pod(ns: str, name: str, labels: dict[str, str], ports: tuple[int, ...]) -> dict[str, Any]:
    serve = "".join(f"python3 -m http.server {p} --bind 0.0.0.0 -d /tmp & " for p in ports)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "c",
                    "image": PYTHON,
                    "imagePullPolicy": "Never",
                    "command": ["sh", "-c", f"{serve}exec sleep 3600"],
                }
            ],
        },
    }


CONNECT = (
    "import socket, sys\n"
    "s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)\n"
    "s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')\n"
    "sys.exit(0 if s.recv(16).startswith(b'HTTP/') else 1)\n"
)


def _reaches(node: Node, ns: str, client: str, ip: str, port: int) -> bool:
    """Whether ``client`` gets an HTTP answer from ip:port (refused or dropped: False)."""
    proc = node.kubectl(
        "exec", "-n", ns, client, "--", "python3", "-c", CONNECT, ip, str(port),
        check=False, timeout=30,
    )  # fmt: skip
    return proc.returncode == 0


def test_pods_outside_the_allowed_selectors_are_refused(
    enforcer: Node, node_namespace: str
) -> None:
    node, ns = enforcer, node_namespace
    owner = Owner(name="d", namespace=ns, uid="u")

    def own(component: str) -> dict[str, str]:
        return {LABEL_DEPLOYMENT: "d", LABEL_COMPONENT: component}

    pods = [
        _pod(ns, "router", own("router"), SERVES["router"]),
        _pod(ns, "worker", own("worker"), SERVES["worker"]),
        _pod(ns, "cache", own("cache"), SERVES["cache"]),
        _pod(ns, "prometheus", dict(PROMETHEUS_LABELS), ()),
        _pod(ns, "stranger", {"app": "stranger"}, ()),
    ]
    node.kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(p) for p in pods))
    node.kubectl("wait", "-n", ns, "--for=condition=Ready", "pod", "--all", "--timeout=120s",
                 timeout=150)  # fmt: skip
    ips = {
        p["metadata"]["name"]: p["status"]["podIP"]
        for p in json.loads(node.kubectl("get", "pods", "-n", ns, "-o", "json").stdout)["items"]
    }
    # Control: without policies the stranger reaches every port (once the servers listen).
    deadline = time.monotonic() + ENFORCE_TIMEOUT_S
    for server, ports in SERVES.items():
        for port in ports:
            while not _reaches(node, ns, "stranger", ips[server], port):
                assert time.monotonic() < deadline, f"{server}:{port} never answered"
                time.sleep(1)

    policies = network_policies(owner, SPEC, OperatorSettings(), runs_cache=True)
    for policy in policies:
        del policy["metadata"]["ownerReferences"]  # no owner here; GC would delete them
    node.kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(p) for p in policies))
    deadline = time.monotonic() + ENFORCE_TIMEOUT_S
    while _reaches(node, ns, "stranger", ips["worker"], RAY_PORT):
        assert time.monotonic() < deadline, "kube-router never enforced the workers' policy"
        time.sleep(1)

    expected = {
        # (client, server, port): admitted?
        ("stranger", "worker", RAY_PORT): False,
        ("router", "worker", RAY_PORT): True,
        ("stranger", "worker", WORKER_METRICS_PORT): False,
        ("prometheus", "worker", WORKER_METRICS_PORT): True,
        ("stranger", "cache", REDIS_PORT): False,
        ("router", "cache", REDIS_PORT): False,
        ("worker", "cache", REDIS_PORT): True,
        ("stranger", "router", ROUTER.fleet_port): False,
        ("prometheus", "router", ROUTER.fleet_port): False,
        ("worker", "router", ROUTER.fleet_port): True,
        ("stranger", "router", ROUTER.http_port): True,  # clients: anyone (they need a key)
        ("stranger", "router", ROUTER.grpc_port): True,
    }
    seen = {key: _reaches(node, ns, key[0], ips[key[1]], key[2]) for key in expected}
    assert seen == expected
