"""The Helm chart: lint, server-side dry-run of its manifests, install/upgrade/uninstall."""

from __future__ import annotations

import json
import secrets
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.integration
CHART = str(Path(__file__).resolve().parents[2] / "charts" / "mainsail")


def helm(bed: Any, *args: str, input: str | None = None) -> str:
    proc = subprocess.run(
        [str(bed.bin_dir / "helm"), "--kubeconfig", str(bed.kubeconfig), *args],
        input=input, capture_output=True, text=True, timeout=120, env=bed.env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_lint_is_clean(kube_testbed: Any) -> None:
    out = helm(kube_testbed, "lint", CHART, "--strict")
    assert "0 chart(s) failed" in out


@pytest.mark.parametrize(
    "extra",
    [[], ["--set", "watchNamespaces={team-a,team-b}"], ["--set", "dashboards.enabled=true"]],
)
def test_rendered_manifests_pass_server_side_dry_run(
    kube_testbed: Any, kube_namespace: str, extra: list[str]
) -> None:
    rendered = helm(
        kube_testbed,
        "template",
        "dry",
        CHART,
        "--namespace",
        kube_namespace,
        "--include-crds",
        *extra,
    )
    for ns in ("team-a", "team-b"):
        kube_testbed.kubectl("create", "namespace", ns, check=False)
    proc = kube_testbed.kubectl(
        "apply", "--dry-run=server", "--server-side", "-f", "-", input=rendered, check=False
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "deployment.apps/dry-mainsail-operator serverside-applied (server dry run)" in out


def test_dashboards_configmap_carries_the_dashboard_file(kube_testbed: Any) -> None:
    rendered = helm(
        kube_testbed, "template", "dash", CHART, "--set", "dashboards.enabled=true",
        "--show-only", "templates/dashboards.yaml",
    )  # fmt: skip
    config_map = yaml.safe_load(rendered)
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = json.loads((Path(CHART) / "dashboards" / "mainsail-router.json").read_text())
    assert json.loads(config_map["data"]["mainsail-router.json"]) == shipped
    off = subprocess.run(
        [str(kube_testbed.bin_dir / "helm"), "template", "dash", CHART,
         "--show-only", "templates/dashboards.yaml"],
        capture_output=True, text=True, timeout=120, env=kube_testbed.env,
    )  # fmt: skip
    assert off.returncode != 0 and "could not find template" in off.stderr  # off by default


def test_install_upgrade_uninstall(kube_testbed: Any, kube_namespace: str) -> None:
    bed, ns, release = kube_testbed, kube_namespace, f"ms-{secrets.token_hex(2)}"
    helm(bed, "install", release, CHART, "--namespace", ns)
    name = f"{release}-mainsail-operator"
    deploy = json.loads(bed.kubectl("get", "-n", ns, "deployment", name, "-o", "json").stdout)
    env = {
        e["name"]: e["value"] for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["MAINSAIL_OPERATOR_RESYNC_SECONDS"] == "60"
    helm(bed, "upgrade", release, CHART, "--namespace", ns, "--set", "resyncSeconds=15")
    deploy = json.loads(bed.kubectl("get", "-n", ns, "deployment", name, "-o", "json").stdout)
    env = {
        e["name"]: e["value"] for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["MAINSAIL_OPERATOR_RESYNC_SECONDS"] == "15"
    assert json.loads(helm(bed, "list", "-n", ns, "-o", "json"))[0]["revision"] in (2, "2")
    helm(bed, "uninstall", release, "--namespace", ns)
    gone = bed.kubectl("get", "-n", ns, "deployment", name, check=False)
    assert gone.returncode != 0 and "NotFound" in gone.stderr
    role = bed.kubectl("get", "clusterrole", f"{ns}-{name}", check=False)
    assert role.returncode != 0
