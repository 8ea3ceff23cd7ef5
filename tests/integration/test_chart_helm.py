"""The Helm chart: lint, server-side dry-run of its manifests, install/upgrade/uninstall."""

from __future__ import annotations

import json
import secrets
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from mainsail.operator.settings import OperatorSettings

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


def test_pod_monitor_selects_the_operators_router_and_worker_pods(kube_testbed: Any) -> None:
    from mainsail.operator.desired_pools import WORKER_COMPONENT
    from mainsail.operator.desired_router import COMPONENT as ROUTER_COMPONENT
    from mainsail.operator.naming import LABEL_COMPONENT, Owner, labels
    from mainsail.spec.worker_metrics import WORKER_METRICS_PORT_NAME

    rendered = helm(
        kube_testbed, "template", "mon", CHART, "--set", "monitoring.podMonitor.enabled=true",
        "--set", "monitoring.podMonitor.labels.release=prom",
        "--show-only", "templates/podmonitor.yaml",
    )  # fmt: skip
    monitor = yaml.safe_load(rendered)
    assert monitor["kind"] == "PodMonitor" and monitor["metadata"]["labels"]["release"] == "prom"
    spec = monitor["spec"]
    assert spec["namespaceSelector"] == {"any": True}
    (expr,) = spec["selector"]["matchExpressions"]
    assert expr["key"] == LABEL_COMPONENT
    assert set(expr["values"]) == {ROUTER_COMPONENT, WORKER_COMPONENT}
    owner = Owner(name="d", namespace="ns", uid="u")
    for component in (ROUTER_COMPONENT, WORKER_COMPONENT):  # the operator's own pod labels
        assert spec["selector"]["matchLabels"].items() <= labels(owner, component).items()
    assert {e["port"] for e in spec["podMetricsEndpoints"]} == {"http", WORKER_METRICS_PORT_NAME}
    rendered = helm(
        kube_testbed, "template", "mon", CHART, "--set", "monitoring.podMonitor.enabled=true",
        "--set", "watchNamespaces={team-a}", "--show-only", "templates/podmonitor.yaml",
    )  # fmt: skip
    scoped = yaml.safe_load(rendered)
    assert scoped["spec"]["namespaceSelector"] == {"matchNames": ["team-a"]}


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


def test_images_are_named_through_values_and_validated_by_the_schema(kube_testbed: Any) -> None:
    """`images.<name>` reaches the operator pod and, through its env, the operator's settings;
    a bad pull policy or an unknown key is refused by values.schema.json before rendering."""
    sets = [
        "images.operator.repository=mainsail/operator", "images.operator.tag=k1",
        "images.operator.pullPolicy=Never", "images.router.repository=mainsail/router",
        "images.router.tag=k2", "images.router.pullPolicy=Never",
        "images.cache.repository=mainsail/redis", "images.cache.tag=k3",
    ]  # fmt: skip
    rendered = helm(
        kube_testbed, "template", "img", CHART, "--show-only", "templates/deployment.yaml",
        *(arg for s in sets for arg in ("--set", s)),
    )  # fmt: skip
    container = yaml.safe_load(rendered)["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "mainsail/operator:k1"
    assert container["imagePullPolicy"] == "Never"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["MAINSAIL_OPERATOR_ROUTER_IMAGE"] == "mainsail/router:k2"
    assert env["MAINSAIL_OPERATOR_ROUTER_PULL_POLICY"] == "Never"
    assert env["MAINSAIL_OPERATOR_WORKER_IMAGE"] == "ghcr.io/mainsail-dev/mainsail-worker:0.1.0"
    assert env["MAINSAIL_OPERATOR_WORKER_PULL_POLICY"] == "IfNotPresent"
    assert env["MAINSAIL_OPERATOR_REDIS_IMAGE"] == "mainsail/redis:k3"
    settings = OperatorSettings.from_env({k: v for k, v in env.items() if "OPERATOR" in k})
    assert settings.pull_policy("mainsail/router:k2") == "Never"
    for bad, says in [
        ("images.worker.pullPolicy=Sometimes", "pullPolicy"),
        ("image.tag=x", "image"),
        ("images.router.tag=a b", "tag"),
    ]:
        proc = subprocess.run(
            [str(kube_testbed.bin_dir / "helm"), "template", "bad", CHART, "--set", bad],
            capture_output=True, text=True, timeout=120, env=kube_testbed.env,
        )  # fmt: skip
        assert proc.returncode != 0 and says in proc.stderr, (bad, proc.stderr)


def test_network_policy_values_reach_the_operator_and_bad_peers_are_refused(
    kube_testbed: Any, tmp_path: Path
) -> None:
    """`networkPolicy.*` becomes the operator's default peers (and its own pods a peer), which
    end up in every deployment's NetworkPolicies; a malformed peer fails at `helm template`."""
    from mainsail.operator.desired_network import network_policies
    from mainsail.operator.naming import Owner
    from mainsail.spec.deployment import ModelDeploymentSpec

    monitoring = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
    }
    gateway = {"ipBlock": {"cidr": "192.0.2.0/24"}}
    values = tmp_path / "values.yaml"
    values.write_text(
        yaml.safe_dump({"networkPolicy": {"clientsFrom": [gateway], "metricsFrom": [monitoring]}})
    )
    rendered = helm(
        kube_testbed, "template", "np", CHART, "--namespace", "ops", "-f", str(values),
        "--show-only", "templates/deployment.yaml",
    )  # fmt: skip
    container = yaml.safe_load(rendered)["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    settings = OperatorSettings.from_env(
        {k: v for k, v in env.items() if k.startswith("MAINSAIL_OPERATOR_")}
    )
    spec = ModelDeploymentSpec.model_validate({"model": {"name": "m", "generate": "llama"}})
    policies = {
        p["metadata"]["name"]: p["spec"]["ingress"]
        for p in network_policies(Owner("d", "team", "u"), spec, settings, runs_cache=False)
    }
    assert policies["d-workers"][1]["from"] == [monitoring]
    _, clients, http = policies["d-router"]
    assert clients["from"] == [gateway]
    operator = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ops"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/component": "operator",
                                        "app.kubernetes.io/instance": "np",
                                        "app.kubernetes.io/name": "mainsail"}},
    }  # fmt: skip
    assert http["from"] == [monitoring, operator]

    values.write_text(yaml.safe_dump({"networkPolicy": {"clientsFrom": [{"ipBlock": {}}]}}))
    proc = subprocess.run(
        [str(kube_testbed.bin_dir / "helm"), "template", "np", CHART, "-f", str(values)],
        capture_output=True, text=True, timeout=120, env=kube_testbed.env,
    )  # fmt: skip
    assert proc.returncode != 0 and "cidr" in proc.stderr, proc.stderr
