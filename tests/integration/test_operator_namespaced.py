"""The chart's namespaced mode on a real API server with RBAC: `watchNamespaces` gives the
operator a Role per listed namespace and nothing cluster-wide.

The chart's ServiceAccount and RBAC are rendered by `helm template` and applied; the real
operator (`python -m mainsail.operator --namespace ...`, as the chart's container runs it)
runs under that ServiceAccount's token. It serves a ModelDeployment in its namespace, never
touches one elsewhere, and every write it might attempt outside its namespaces is refused by
the API server.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.operator_harness import (
    ROOT,
    OperatorProcess,
    apply_example,
    condition,
    install_crds,
    names,
)

pytestmark = pytest.mark.integration
EXAMPLE = ROOT / "deploy/examples/tiny.yaml"


class Identity:
    def __init__(self, bed: Any, home: str, watched: str, other: str, kubeconfig: Path) -> None:
        self.bed, self.home, self.watched, self.other = bed, home, watched, other
        self.kubeconfig = kubeconfig

    def kubectl(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        """kubectl as the operator's ServiceAccount."""
        result: subprocess.CompletedProcess[str] = self.bed.kubectl(
            "--kubeconfig", str(self.kubeconfig), *args, input=input, check=False
        )
        return result

    def can(self, verb: str, resource: str, *where: str) -> bool:
        who = f"system:serviceaccount:{self.home}:{self.home}-mainsail-operator"
        proc = self.bed.kubectl("auth", "can-i", verb, resource, "--as", who, *where, check=False)
        return bool(proc.stdout.strip() == "yes")


@pytest.fixture(scope="module")
def namespaced(kube_testbed: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Identity]:
    install_crds(kube_testbed)
    suffix = secrets.token_hex(3)
    home, watched, other = (f"{n}-{suffix}" for n in ("nsop", "team", "other"))
    for ns in (home, watched, other):
        kube_testbed.kubectl("create", "namespace", ns)
    rendered = subprocess.run(
        [str(kube_testbed.bin_dir / "helm"), "template", home, str(ROOT / "charts/mainsail"),
         "--namespace", home, "--set", f"watchNamespaces={{{watched}}}",
         "--show-only", "templates/serviceaccount.yaml", "--show-only", "templates/rbac.yaml"],
        capture_output=True, text=True, check=True, timeout=60, env=kube_testbed.env,
    ).stdout  # fmt: skip
    kinds = {(d["kind"], d["metadata"].get("namespace")) for d in yaml.safe_load_all(rendered)}
    # Nothing cluster-wide: a Role and its binding in the watched namespace only.
    assert kinds == {("ServiceAccount", home), ("Role", watched), ("RoleBinding", watched)}
    kube_testbed.kubectl("apply", "-f", "-", input=rendered)
    account = f"{home}-mainsail-operator"
    token = kube_testbed.kubectl(
        "create", "token", account, "-n", home, "--duration=1h"
    ).stdout.strip()
    config = yaml.safe_load(kube_testbed.kubeconfig.read_text())
    config["users"] = [{"name": "operator", "user": {"token": token}}]
    config["contexts"][0]["context"]["user"] = "operator"
    path = tmp_path_factory.mktemp("namespaced") / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    yield Identity(kube_testbed, home, watched, other, path)
    for ns in (home, watched, other):
        kube_testbed.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_rbac_grants_the_watched_namespace_and_nothing_else(namespaced: Identity) -> None:
    me = namespaced
    for verb, resource in (
        ("create", "deployments.apps"),
        ("patch", "rayclusters.ray.io"),
        ("create", "networkpolicies.networking.k8s.io"),
        ("create", "secrets"),
        ("watch", "modeldeployments.mainsail.dev"),
    ):
        assert me.can(verb, resource, "-n", me.watched), (verb, resource)
        for elsewhere in (("-n", me.other), ("-n", me.home), ("-n", "default"), ("-A",)):
            assert not me.can(verb, resource, *elsewhere), (verb, resource, elsewhere)
    assert not me.can("list", "secrets", "-n", me.watched)
    assert not me.can("create", "clusterroles.rbac.authorization.k8s.io")
    assert not me.can("get", "customresourcedefinitions.apiextensions.k8s.io")

    # Failing paths with the operator's own token: every write outside is Forbidden.
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "probe"}}
    for ns in (me.other, me.home):
        proc = me.kubectl("create", "-n", ns, "-f", "-", input=json.dumps(config_map))
        assert proc.returncode != 0 and "forbidden" in proc.stderr.lower(), proc.stderr
    proc = me.kubectl("get", "modeldeployments", "-A")
    assert proc.returncode != 0 and "forbidden" in proc.stderr.lower(), proc.stderr
    # ... and the same write in the watched namespace is allowed (a control).
    proc = me.kubectl("create", "-n", me.watched, "-f", "-", input=json.dumps(config_map))
    assert proc.returncode == 0, proc.stderr


def test_the_operator_serves_its_namespace_only(namespaced: Identity, tmp_path: Path) -> None:
    me, bed = namespaced, namespaced.bed
    log = tmp_path / "operator.log"
    operator = OperatorProcess(me.kubeconfig, log, namespaces=(me.watched,))
    operator.start()
    try:
        bed.kubectl("apply", "-n", me.other, "-f", str(EXAMPLE))
        md = apply_example(bed, me.watched, EXAMPLE)  # children and status appear
        assert condition(md, "KVConfigConsistent")[0] == "True"
        # By the time the watched one is done, the other has had every chance: untouched.
        time.sleep(3)
        untouched = json.loads(
            bed.kubectl("get", "-n", me.other, "modeldeployment", "tiny", "-o", "json").stdout
        )
        assert "status" not in untouched and not untouched["metadata"].get("finalizers")
        assert names(bed, me.other) == set()
    finally:
        operator.stop()
    text = log.read_text()
    assert "Traceback" not in text and "403" not in text, text[-3000:]
