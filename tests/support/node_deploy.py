"""A Mainsail deployment on the test bed's node: install the chart, apply a ModelDeployment,
and read what its router and workers report (admin API, /metrics).

Why a module: cluster tests that install the chart ask the same questions — which workers
are registered, which one serves a request, what the router's and a worker's counters say —
and must ask them the same way, through the router Service's and the pods' addresses only.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from support.chart_images import IMAGE_NAMES, chart_image, helm_image_values
from support.node import Node
from support.node_config import ROOT

READY_TIMEOUT_S = 1200.0
WORKERS = "app.kubernetes.io/component=worker"


def install_chart(node: Node, ns: str, *args: str, release: str = "mainsail") -> None:
    """The four images imported and the chart installed in ``ns`` (its operator running);
    ``args`` go to `helm install` after the image values (say `--set autoscaleSeconds=2`)."""
    images = {name: chart_image(name) for name in IMAGE_NAMES}
    for info in images.values():
        node.ensure_image(info["tar"])
    node.helm(
        "install", release, str(ROOT / "charts/mainsail"), "--namespace", ns,
        *helm_image_values(images), *args, "--wait", "--timeout", "10m", timeout=900,
    )  # fmt: skip


def diagnostics(node: Node, ns: str, name: str) -> str:
    """What a person would look at when a deployment does not do what it should."""
    parts = []
    for args in (
        ("get", "pods", "-A", "-o", "wide"),
        ("get", "modeldeployment", name, "-n", ns, "-o", "jsonpath={.status}"),
        ("get", "events", "-n", ns, "--sort-by=.lastTimestamp"),
    ):
        parts.append(node.kubectl(*args, check=False).stdout[-4000:])
    pods = node.kubectl("get", "pods", "-n", ns, "-o", "name", check=False).stdout.split()
    for pod in pods:
        logs = node.kubectl("logs", "-n", ns, pod, "--all-containers", "--tail=40", check=False)
        parts.append(f"--- {pod}\n{logs.stdout[-3000:]}{logs.stderr[-500:]}")
    return "\n".join(parts)


def apply_ready(node: Node, ns: str, document: dict[str, Any]) -> float:
    """Apply a ModelDeployment and wait until it is Ready; seconds it took (fails the test
    with the diagnostics when it is not Ready in time)."""
    name = document["metadata"]["name"]
    node.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(document))
    started = time.monotonic()
    try:
        node.kubectl(
            "wait", "-n", ns, "--for=condition=Ready", f"modeldeployment/{name}",
            f"--timeout={int(READY_TIMEOUT_S)}s", timeout=READY_TIMEOUT_S + 30,
        )  # fmt: skip
    except subprocess.CalledProcessError:
        pytest.fail(f"{name} not Ready after {READY_TIMEOUT_S:g} s:\n{diagnostics(node, ns, name)}")
    return time.monotonic() - started


def delete_deployment(node: Node, ns: str, name: str) -> None:
    """Delete a ModelDeployment and wait until its pods are gone (they hold CPU until then)."""
    node.kubectl("delete", "-n", ns, "modeldeployment", name, "--timeout=180s", timeout=200)
    node.wait_for(
        lambda: not node.kubectl(
            "get", "pods", "-n", ns, "-l", f"mainsail.dev/deployment={name}", "-o", "name"
        ).stdout.strip(),
        timeout=300, what=f"{name}'s pods gone",
    )  # fmt: skip


def credentials(node: Node, ns: str, name: str) -> dict[str, str]:
    """The Secret the operator issued for ``name`` (apiKeys, adminToken, tls.crt, ...)."""
    secret = json.loads(
        node.kubectl("get", "secret", "-n", ns, f"{name}-worker-credential", "-o", "json").stdout
    )
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


def client_key(secret: dict[str, str]) -> str:
    return secret["apiKeys"].split(",")[0].strip()


def admin(
    node: Node, url: str, token: str, body: dict[str, Any] | None = None, method: str = ""
) -> Any:
    """GET (or POST ``body``, or ``method``) an admin endpoint of a router with the admin
    token; its JSON."""

    def call() -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            url, data=data, headers={"Authorization": f"Bearer {token}"},
            method=method or ("POST" if body is not None else "GET"),
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=30) as resp:
            return json.loads(resp.read())

    return node.in_netns(call, timeout=40)


def workers(node: Node, router_ip: str, token: str) -> dict[str, dict[str, Any]]:
    """The router's registered workers by id (`GET /workers`: load, outstanding, draining)."""
    listed = admin(node, f"http://{router_ip}:8000/workers", token)["data"]
    return {w["id"]: w for w in listed}


def worker_pods(node: Node, ns: str, role: str = "unified") -> dict[str, dict[str, Any]]:
    """The pool's worker pods that are not terminating, by name."""
    selector = f"mainsail.dev/role={role},{WORKERS}"
    items = json.loads(node.kubectl("get", "pods", "-n", ns, "-l", selector, "-o", "json").stdout)
    return {
        p["metadata"]["name"]: p
        for p in items["items"]
        if not p["metadata"].get("deletionTimestamp")
    }


def scrape(node: Node, url: str) -> dict[str, float]:
    """A /metrics page as {sample name: value}, label sets summed (counters end in _total)."""

    def get() -> str:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return str(resp.read().decode())

    values: dict[str, float] = {}
    for family in text_string_to_metric_families(node.in_netns(get, timeout=20)):
        for sample in family.samples:
            values[sample.name] = values.get(sample.name, 0.0) + float(sample.value)
    return values


def events(node: Node, ns: str, involved: str) -> list[dict[str, Any]]:
    """The events about object ``involved`` in ``ns``."""
    listed = node.kubectl(
        "get", "events", "-n", ns, "--field-selector", f"involvedObject.name={involved}",
        "-o", "json",
    ).stdout  # fmt: skip
    items: list[dict[str, Any]] = json.loads(listed)["items"]
    return items
