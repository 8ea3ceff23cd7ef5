"""The cluster tier: tests on a real single-node Kubernetes (tests/support/node.py).

One node per session, in its own network namespace, with the KubeRay operator running. Tests
drive it with `node_cluster.kubectl(...)` / `.helm(...)` (run through `ip netns exec`), run any
command there with `.run_in_netns(argv)`, open sockets from Python with `.in_netns(fn)`, and add
images with `.ensure_image(tar)`. Images every test needs go in `node_cluster_images`.

The binaries and the small images are built at collection time (scripts/test.sh builds them
earlier still, so their time is visible), never inside a test's timeout. Without root or
network-namespace support the tier skips; in CI it runs.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.node import Binaries, Node, NodeError, start_node, support_problem
from support.node_images import busybox_image, debian_python_image, pause_image

SESSION_NODE_TIMEOUT_S = 900


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Build the node's binaries and images before any test runs, if a cluster test is
    selected and the machine can run a node."""
    cluster_items = [i for i in items if "node_cluster" in getattr(i, "fixturenames", ())]
    for item in cluster_items:
        # The first test's timeout also covers starting the node and importing its images
        # (gigabytes for the worker image): give these tests room unless they set their own.
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(SESSION_NODE_TIMEOUT_S))
    if not cluster_items or support_problem() is not None:
        return
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    try:
        Binaries.ensure()
        pause_image(), busybox_image(), debian_python_image()
    except (NodeError, RuntimeError) as exc:
        # Not fatal here: the node_cluster fixture retries and fails the tests that need it.
        if reporter is not None:
            reporter.write_line(f"node test bed: {exc}", red=True)


@pytest.fixture(scope="session")
def node_cluster_images() -> list[Path]:
    """Image tars imported into the session's node at start (add the tier's images here)."""
    return [debian_python_image()]


@pytest.fixture(scope="session")
def node_cluster(
    node_cluster_images: list[Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Node]:
    """A running single-node cluster (KubeRay operator included), torn down at session end."""
    if problem := support_problem():
        pytest.skip(problem)
    node = start_node(
        images=node_cluster_images,
        kuberay=True,
        log_dir=tmp_path_factory.mktemp("node-logs"),
    )
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture
def node_namespace(node_cluster: Node, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace (with its default ServiceAccount) per test; deleted, not awaited."""
    base = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{base or 't'}-{secrets.token_hex(3)}"
    node_cluster.create_namespace(name)
    yield name
    node_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
