"""deploy/kind cannot run without Docker; check what can be checked without it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
KIND = ROOT / "deploy" / "kind"


def test_kind_config_parses() -> None:
    config = yaml.safe_load((KIND / "kind-config.yaml").read_text())
    assert config["kind"] == "Cluster" and config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    assert [n["role"] for n in config["nodes"]].count("control-plane") == 1


def test_up_script_is_valid_bash_and_uses_the_chart() -> None:
    script = KIND / "up.sh"
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=10)
    text = script.read_text()
    assert "charts/mainsail" in text and "kuberay-operator" in text
    # Docker users build the same files as the engine-less builder (test_images_dockerfile).
    assert '"$root/deploy/images/Dockerfile.$component"' in text
    assert not list(KIND.glob("Dockerfile*"))
