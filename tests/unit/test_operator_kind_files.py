"""deploy/kind cannot run without Docker; check what can be checked without it."""

from __future__ import annotations

import re
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


@pytest.mark.parametrize("component", ["operator", "router", "worker"])
def test_dockerfiles_copy_existing_folders(component: str) -> None:
    text = (KIND / f"Dockerfile.{component}").read_text()
    assert any(line.startswith("FROM ") for line in text.splitlines())
    for source in re.findall(r"^COPY (?:--chown=\S+ )?(\S+) ", text, flags=re.M):
        assert (ROOT / source).exists(), f"Dockerfile.{component} copies missing {source}"


def test_up_script_is_valid_bash_and_uses_the_chart() -> None:
    script = KIND / "up.sh"
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=10)
    text = script.read_text()
    assert "charts/mainsail" in text and "kuberay-operator" in text
