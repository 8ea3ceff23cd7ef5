"""An operator pass cut short, then a restarted operator: no duplicate children.

On a real API server with the chart's RBAC (namespaced mode: a Role in the watched namespace)
and the real operator process. The Role is first edited to make Deployments read-only, so every
pass deterministically stops at the router Deployment, late in the apply order: the children
before it exist, status (`Ready` False, reason `ApplyFailed`) and a Warning event name the
refused child. Then the operator is killed (SIGKILL, as a force-deleted pod), the Role
restored, and a new operator process finishes the job: exactly the spec's children, each once,
each controlled by the deployment, the ones made before the kill untouched (same uid).
tests/cluster/test_cluster_serving.py does the same with the chart's pod on a real node.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.operator_harness import (
    ROOT,
    OperatorProcess,
    expected_children,
    get,
    install_crds,
    names,
    wait_for,
    without_deployment_writes,
)

pytestmark = pytest.mark.integration
EXAMPLE = ROOT / "deploy/examples/tiny.yaml"
ROUTER = ("Deployment", "tiny-router")
KINDS = (
    "networkpolicies,configmaps,services,deployments,statefulsets,rayclusters,servingpools,"
    "poddisruptionbudgets"
)


@pytest.fixture
def watched(kube_testbed: Any, tmp_path: Path) -> Iterator[tuple[str, str, Path]]:
    """(chart RBAC as rendered, the watched namespace, the operator's kubeconfig)."""
    install_crds(kube_testbed)
    suffix = secrets.token_hex(3)
    home, ns = f"refop-{suffix}", f"refused-{suffix}"
    for name in (home, ns):
        kube_testbed.kubectl("create", "namespace", name)
    rendered = subprocess.run(
        [str(kube_testbed.bin_dir / "helm"), "template", home, str(ROOT / "charts/mainsail"),
         "--namespace", home, "--set", f"watchNamespaces={{{ns}}}",
         "--show-only", "templates/serviceaccount.yaml", "--show-only", "templates/rbac.yaml"],
        capture_output=True, text=True, check=True, timeout=60, env=kube_testbed.env,
    ).stdout  # fmt: skip
    kube_testbed.kubectl("apply", "-f", "-", input=rendered)
    token = kube_testbed.kubectl(
        "create", "token", f"{home}-mainsail-operator", "-n", home, "--duration=1h"
    ).stdout.strip()
    config = yaml.safe_load(kube_testbed.kubeconfig.read_text())
    config["users"] = [{"name": "operator", "user": {"token": token}}]
    config["contexts"][0]["context"]["user"] = "operator"
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    yield rendered, ns, path
    for name in (home, ns):
        kube_testbed.kubectl("delete", "namespace", name, "--wait=false", check=False)


def _ready(bed: Any, ns: str) -> dict[str, Any]:
    md = get(bed, ns, "modeldeployment", "tiny")
    return next(
        (c for c in (md.get("status") or {}).get("conditions") or [] if c["type"] == "Ready"), {}
    )


def test_a_pass_cut_short_then_a_restarted_operator_makes_no_second_copy(
    kube_testbed: Any, watched: tuple[str, str, Path], tmp_path: Path
) -> None:
    bed, (rendered, ns, kubeconfig) = kube_testbed, watched
    (role,) = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "Role"]
    role["rules"] = without_deployment_writes(role["rules"])
    bed.kubectl("apply", "-f", "-", input=json.dumps(role))
    (binding,) = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "RoleBinding"]
    (subject,) = binding["subjects"]
    account = f"system:serviceaccount:{subject['namespace']}:{subject['name']}"
    wait_for(lambda: bed.kubectl("auth", "can-i", "patch", "deployments.apps", "-n", ns,
                                 "--as", account, check=False).stdout.strip() == "no",
             "the edited Role in force")  # fmt: skip
    first = OperatorProcess(kubeconfig, tmp_path / "operator-1.log", namespaces=(ns,))
    first.start()
    try:
        bed.kubectl("apply", "-n", ns, "-f", str(EXAMPLE))
        ready = wait_for(lambda: (c := _ready(bed, ns)).get("reason") == "ApplyFailed" and c,
                         "Ready False with ApplyFailed")  # fmt: skip
        want = expected_children(EXAMPLE, ns)
        made = names(bed, ns)
        # Half-finished: everything before the router Deployment in the apply order, not it.
        assert made == want - {ROUTER}, sorted(made ^ want)
        assert ready["status"] == "False"
        assert "Deployment/tiny-router" in ready["message"] and "forbidden" in ready["message"]
        events = json.loads(bed.kubectl(
            "get", "events", "-n", ns, "--field-selector",
            "involvedObject.name=tiny,reason=ApplyFailed", "-o", "json",
        ).stdout)["items"]  # fmt: skip
        assert events and events[0]["type"] == "Warning"
        assert "Deployment/tiny-router" in events[0]["message"]
        uids = {n: get(bed, ns, *n)["metadata"]["uid"] for n in made}
    finally:
        first.kill()
    bed.kubectl("apply", "-f", "-", input=rendered)  # the chart's Role again
    second = OperatorProcess(kubeconfig, tmp_path / "operator-2.log", namespaces=(ns,))
    second.start()
    try:
        wait_for(lambda: names(bed, ns) == want, "the restarted operator's children")
        wait_for(lambda: _ready(bed, ns).get("reason") not in (None, "ApplyFailed"),
                 "status no longer ApplyFailed")  # fmt: skip
    finally:
        second.stop()
    md_uid = get(bed, ns, "modeldeployment", "tiny")["metadata"]["uid"]
    items = json.loads(
        bed.kubectl("get", "-n", ns, KINDS, "-l", "mainsail.dev/deployment", "-o", "json").stdout
    )["items"]
    items.append(get(bed, ns, "secret", "tiny-worker-credential"))  # read by name only
    listed = [(i["kind"], i["metadata"]["name"]) for i in items]
    assert len(listed) == len(set(listed)) == len(want)
    for item in items:
        (owner,) = item["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["uid"], owner["controller"]) == ("ModelDeployment", md_uid,
                                                                      True)  # fmt: skip
    assert {n: get(bed, ns, *n)["metadata"]["uid"] for n in uids} == uids
