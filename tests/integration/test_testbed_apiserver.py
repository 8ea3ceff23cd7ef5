"""The test bed is a real API server: CEL validation, subresources, RBAC, version ldflags.

These guard the promises other integration tests rely on (docs/testbed.md); if one fails,
the binaries or the fixture flags are wrong, not the operator.
"""

from __future__ import annotations

import json
import re
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from integration.conftest import KubeTestbed

pytestmark = pytest.mark.integration

GROUP = "testbed.mainsail.dev"
CRD_NAME = f"gadgets.{GROUP}"
CEL_MESSAGE = "minReplicas must not exceed maxReplicas"


def _crd() -> dict[str, Any]:
    spec_schema = {
        "type": "object",
        "properties": {
            "replicas": {"type": "integer", "minimum": 0},
            "minReplicas": {"type": "integer", "minimum": 0},
            "maxReplicas": {"type": "integer", "minimum": 0},
        },
        "x-kubernetes-validations": [
            {"rule": "self.minReplicas <= self.maxReplicas", "message": CEL_MESSAGE}
        ],
    }
    status_schema = {
        "type": "object",
        "properties": {"replicas": {"type": "integer"}, "selector": {"type": "string"}},
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"plural": "gadgets", "singular": "gadget", "kind": "Gadget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {"spec": spec_schema, "status": status_schema},
                        }
                    },
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.replicas",
                            "statusReplicasPath": ".status.replicas",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                }
            ],
        },
    }


def _gadget(name: str, replicas: int, min_replicas: int, max_replicas: int) -> str:
    return json.dumps(
        {
            "apiVersion": f"{GROUP}/v1",
            "kind": "Gadget",
            "metadata": {"name": name},
            "spec": {
                "replicas": replicas,
                "minReplicas": min_replicas,
                "maxReplicas": max_replicas,
            },
        }
    )


@pytest.fixture(scope="module")
def gadget_crd(kube_testbed: KubeTestbed) -> Iterator[str]:
    kube_testbed.kubectl("apply", "-f", "-", input=json.dumps(_crd()))
    kube_testbed.kubectl("wait", "--for=condition=Established", f"crd/{CRD_NAME}", "--timeout=30s")
    yield CRD_NAME


def test_server_and_clients_report_pinned_versions(kube_testbed: KubeTestbed) -> None:
    """Version ldflags took: Helm and kubectl skew checks read the real server version."""
    lib = Path(__file__).resolve().parents[2] / "deploy" / "testbed" / "lib.sh"
    pinned = re.search(r"^K8S_VERSION=(\S+)$", lib.read_text(), re.M)
    assert pinned is not None
    version = json.loads(kube_testbed.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == pinned.group(1)
    assert version["clientVersion"]["minor"] == version["serverVersion"]["minor"]
    helm = subprocess.run(
        ["helm", "version", "--short"],
        capture_output=True, text=True, check=True, timeout=30, env=kube_testbed.env,
    )  # fmt: skip
    assert helm.stdout.startswith("v4.")


def test_cel_rule_refuses_invalid_object_with_its_message(
    kube_testbed: KubeTestbed, kube_namespace: str, gadget_crd: str
) -> None:
    bad = kube_testbed.kubectl(
        "apply", "-n", kube_namespace, "-f", "-", input=_gadget("bad", 1, 5, 2), check=False
    )
    assert bad.returncode != 0
    assert CEL_MESSAGE in bad.stderr
    kube_testbed.kubectl("apply", "-n", kube_namespace, "-f", "-", input=_gadget("ok", 1, 1, 3))
    names = kube_testbed.kubectl("get", "gadgets", "-n", kube_namespace, "-o", "name").stdout
    assert names.split() == [f"gadget.{GROUP}/ok"]


def test_scale_and_status_subresources(
    kube_testbed: KubeTestbed, kube_namespace: str, gadget_crd: str
) -> None:
    ns = ["-n", kube_namespace]
    kube_testbed.kubectl("apply", *ns, "-f", "-", input=_gadget("g", 1, 0, 10))
    kube_testbed.kubectl("scale", *ns, "gadget/g", "--replicas=4")
    spec = kube_testbed.kubectl("get", *ns, "gadget/g", "-o", "jsonpath={.spec.replicas}")
    assert spec.stdout == "4"

    status = json.dumps({"status": {"replicas": 3, "selector": "app=g"}})
    kube_testbed.kubectl(
        "patch", *ns, "gadget/g", "--subresource=status", "--type=merge", "-p", status
    )
    scale = json.loads(
        kube_testbed.kubectl("get", *ns, "gadget/g", "--subresource=scale", "-o", "json").stdout
    )
    assert scale["kind"] == "Scale"
    assert scale["spec"]["replicas"] == 4
    assert scale["status"] == {"replicas": 3, "selector": "app=g"}


def test_service_account_rbac_denies_secrets(
    kube_testbed: KubeTestbed, kube_namespace: str
) -> None:
    ns = ["-n", kube_namespace]
    kube_testbed.kubectl("create", *ns, "serviceaccount", "reader")
    kube_testbed.kubectl(
        "create", *ns, "role", "cm-reader", "--verb=get,list", "--resource=configmaps"
    )
    kube_testbed.kubectl(
        "create", *ns, "rolebinding", "cm-reader", "--role=cm-reader",
        f"--serviceaccount={kube_namespace}:reader",
    )  # fmt: skip
    kube_testbed.kubectl("create", *ns, "configmap", "visible", "--from-literal=a=b")
    token = kube_testbed.kubectl("create", *ns, "token", "reader", "--duration=10m").stdout
    token = token.strip()

    allowed = kube_testbed.kubectl("get", *ns, "configmaps", "-o", "name", f"--token={token}")
    assert "configmap/visible" in allowed.stdout.split()

    ca = ssl.create_default_context(cafile=str(kube_testbed.ca_file))
    request = urllib.request.Request(
        f"{kube_testbed.server}/api/v1/namespaces/{kube_namespace}/secrets",
        headers={"Authorization": f"Bearer {token}"},
    )
    with pytest.raises(urllib.error.HTTPError) as denied:
        urllib.request.urlopen(request, timeout=10, context=ca)
    assert denied.value.code == 403
    body = json.loads(denied.value.read())
    assert body["reason"] == "Forbidden"
    assert f"system:serviceaccount:{kube_namespace}:reader" in body["message"]


def test_python_client_sees_the_namespace(kube_api_client: Any, kube_namespace: str) -> None:
    from kubernetes import client

    namespace = client.CoreV1Api(kube_api_client).read_namespace(kube_namespace)
    assert namespace.status is not None
    assert namespace.status.phase == "Active"
