"""One KubeRay version across the test bed: the operator the node runs and the CRD the API-only
tests install come from the same module version (and deploy/kind installs the same)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from support.operator_harness import KUBERAY_VERSION

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def test_kuberay_version_is_one_pin() -> None:
    node = re.search(
        r"^KUBERAY_VERSION=(v\S+)$", (ROOT / "deploy/testbed/ensure-node.sh").read_text(), re.M
    )
    kind = re.search(r"KUBERAY_VERSION:-([0-9.]+)", (ROOT / "deploy/kind/up.sh").read_text())
    assert node is not None and kind is not None
    assert node.group(1) == KUBERAY_VERSION == f"v{kind.group(1)}"
