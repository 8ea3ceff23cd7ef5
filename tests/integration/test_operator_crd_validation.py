"""The API server refuses bad ModelDeployments with a message naming the field (no operator)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
GOOD: dict[str, Any] = {
    "apiVersion": "mainsail.dev/v1alpha1",
    "kind": "ModelDeployment",
    "metadata": {"name": "m"},
    "spec": {"model": {"name": "tiny", "generate": "llama"}, "pools": {"unified": {}}},
}


@pytest.fixture(scope="module")
def crds(kube_testbed: Any) -> Any:
    crd_dir = str(ROOT / "deploy/crds")
    kube_testbed.kubectl("apply", "--server-side", "--force-conflicts", "-f", crd_dir)
    for name in ("modeldeployments.mainsail.dev", "servingpools.mainsail.dev"):
        kube_testbed.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=30s")
    return kube_testbed


def _with(path: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(GOOD)
    *parents, leaf = path.split(".")
    node = doc
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value
    return doc


CASES = {
    "type": (_with("spec.engine.blockSize", "big"), ["spec.engine.blockSize", "type integer"]),
    "range": (
        _with("spec.engine.blockSize", 0),
        ["spec.engine.blockSize", "greater than or equal"],
    ),
    "enum": (_with("spec.model.generate", "gpt2"), ["spec.model.generate", "Unsupported value"]),
    "pattern": (
        _with("spec.slo.classes", [{"name": "Bad Name"}]),
        ["spec.slo.classes[0].name", "should match"],
    ),
    "cel-min-max": (
        _with("spec.pools.unified", {"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}),
        ["spec.pools.unified.autoscaling.minReplicas", "minReplicas must be <= maxReplicas"],
    ),
    "cel-prefill-decode": (
        _with("spec.pools", {"unified": {}, "prefill": {}}),
        ["spec.pools", "prefill and decode must be both set or both unset"],
    ),
    "cel-unified": (
        _with("spec.pools", {"encode": {}}),
        ["spec.pools", "set unified, or both prefill and decode"],
    ),
    "cel-model-source": (
        _with("spec.model", {"name": "x"}),
        ["spec.model", "set exactly one of path or generate"],
    ),
    "cel-router-ports": (
        _with("spec.router", {"fleetPort": 50051}),
        ["spec.router.fleetPort", "httpPort, grpcPort and fleetPort must differ"],
    ),
    "cel-network-peer": (
        _with(
            "spec.network",
            {"clientsFrom": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]},
        ),
        ["spec.network.clientsFrom[0]", "a peer sets ipBlock, or podSelector"],
    ),
    "cel-model-volume-path": (
        _with("spec.model", {"name": "x", "path": "models/x", "volume": {"claimName": "m"}}),
        ["spec.model.volume", "volume needs an absolute path"],
    ),
    "cel-model-volume-source": (
        _with("spec.model", {"name": "x", "path": "/m", "volume": {"subPath": "x"}}),
        ["spec.model.volume", "set exactly one of claimName or hostPath"],
    ),
    "cel-model-volume-dotdot": (
        _with("spec.model", {"name": "x", "path": "/m", "volume": {"hostPath": "/srv/../etc"}}),
        ["spec.model.volume.hostPath", "hostPath must not contain .."],
    ),
    "model-volume-claim-name": (
        _with("spec.model", {"name": "x", "path": "/m", "volume": {"claimName": "Bad_Name"}}),
        ["spec.model.volume.claimName", "should match"],
    ),
    "cel-expert-parallel-range": (
        _with("spec.engine.expertParallel", {"min": 4, "max": 2}),
        ["spec.engine.expertParallel.min", "min must be <= max"],
    ),
    "cel-expert-parallel-divisible": (
        _with("spec.engine", {"tensorParallel": 2, "expertParallel": {"min": 2, "max": 3}}),
        ["spec.engine.expertParallel", "multiples of tensorParallel"],
    ),
    "name-length": (_with("metadata.name", "x" * 60), ["metadata.name must be at most 55"]),
    "unknown-field": (_with("spec.engine.bogus", 1), ['unknown field "spec.engine.bogus"']),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_invalid_spec_is_refused_naming_the_field(
    crds: Any, kube_namespace: str, case: str
) -> None:
    doc, messages = CASES[case]
    proc = crds.kubectl(
        "create", "-n", kube_namespace, "-f", "-", input=json.dumps(doc), check=False
    )
    assert proc.returncode != 0, proc.stdout
    for message in messages:
        assert message in proc.stderr, proc.stderr


def test_examples_and_defaults_are_accepted(crds: Any, kube_namespace: str) -> None:
    for example in sorted((ROOT / "deploy/examples").glob("*.yaml")):
        crds.kubectl("apply", "--dry-run=server", "-n", kube_namespace, "-f", str(example))
    crds.kubectl("create", "-n", kube_namespace, "-f", "-", input=json.dumps(GOOD))
    out = crds.kubectl("get", "-n", kube_namespace, "modeldeployment", "m", "-o", "json").stdout
    stored = json.loads(out)
    assert stored["spec"]["pools"]["unified"]["replicas"] == 1  # scalar defaults from the schema
    assert stored["spec"]["model"]["seed"] == 0


def test_serving_pool_scale_subresource_without_operator(crds: Any, kube_namespace: str) -> None:
    pool = {
        "apiVersion": "mainsail.dev/v1alpha1",
        "kind": "ServingPool",
        "metadata": {"name": "p"},
        "spec": {"deployment": "m", "role": "decode", "replicas": 1, "template": {}},
    }
    crds.kubectl("create", "-n", kube_namespace, "-f", "-", input=yaml.safe_dump(pool))
    crds.kubectl("scale", "-n", kube_namespace, "servingpool", "p", "--replicas=4")
    out = crds.kubectl("get", "-n", kube_namespace, "servingpool", "p", "-o", "json").stdout
    assert json.loads(out)["spec"]["replicas"] == 4
    bad = crds.kubectl(
        "scale", "-n", kube_namespace, "servingpool", "p", "--replicas=-1", check=False
    )
    assert bad.returncode != 0
