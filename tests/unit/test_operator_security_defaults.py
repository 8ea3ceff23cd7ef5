"""What the operator creates is locked down by default (issue 12, class 6).

Auth on with an issued key when no Secret is named; the worker plane's token and TLS files in
every router and Ray pod; credentials issued once and kept across passes, re-issued only on a
rotation request; NetworkPolicies admitting only the deployment's router and Ray pods to the
workers and only Ray pods to Redis; every pod non-root with a read-only root file system,
no capabilities and limits on every container; Ray's dashboard (its job API) off.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from mainsail.operator.desired import desired_children, pod_templates
from mainsail.operator.desired_secrets import ANNOTATION_ROTATE, Issuer
from mainsail.operator.naming import Owner
from mainsail.operator.settings import OperatorSettings
from mainsail.spec.deployment import ModelDeployment, ModelDeploymentSpec
from mainsail.spec.worker_auth import TLS_SERVER_NAME, WORKER_TOKEN_ENV
from mainsail.spec.worker_metrics import WORKER_METRICS_PORT

pytestmark = pytest.mark.unit
OWNER = Owner(name="dense-pd", namespace="ns", uid="uid-1")
EXAMPLES = Path(__file__).parents[2] / "deploy" / "examples"


def _spec() -> ModelDeploymentSpec:
    doc = yaml.safe_load((EXAMPLES / "dense-prefill-decode.yaml").read_text())
    return ModelDeployment.model_validate(doc).spec


def _counter(start: int = 0) -> Issuer:
    n = iter(range(start, 10_000))
    return Issuer(token=lambda: f"token-{next(n)}")


def _by_kind(children: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for c in children:
        out.setdefault(c["kind"], []).append(c)
    return out


def test_credentials_are_issued_once_and_rotated_on_request() -> None:
    spec = _spec()
    first = _by_kind(desired_children(OWNER, spec, OperatorSettings(), issuer=_counter()))
    secret = first["Secret"][0]
    data = {k: base64.b64decode(v) for k, v in secret["data"].items()}
    assert set(data) == {
        "workerToken", "redisPassword", "apiKeys", "adminToken", "ca.crt", "tls.crt", "tls.key",
    }  # fmt: skip
    assert len(set(data.values())) == len(data)  # all distinct
    again = desired_children(
        OWNER, spec, OperatorSettings(), observed_secret=secret, issuer=_counter()
    )
    assert _by_kind(again)["Secret"][0]["data"] == secret["data"]
    settings = OperatorSettings()
    rotated = _by_kind(
        desired_children(
            OWNER, spec, settings, observed_secret=secret, rotate="1", issuer=_counter(100)
        )
    )
    new = rotated["Secret"][0]
    assert new["metadata"]["annotations"][ANNOTATION_ROTATE] == "1"
    assert new["data"]["workerToken"] != secret["data"]["workerToken"]
    assert new["data"]["tls.key"] != secret["data"]["tls.key"]
    # Pods roll with the rotation.
    old_router = first["Deployment"][0]["spec"]["template"]["metadata"]["annotations"]
    new_router = rotated["Deployment"][0]["spec"]["template"]["metadata"]["annotations"]
    assert old_router != new_router


def test_router_and_ray_pods_carry_the_worker_plane_credential() -> None:
    kinds = _by_kind(desired_children(OWNER, _spec(), OperatorSettings(), issuer=_counter()))
    router = kinds["Deployment"][0]["spec"]["template"]
    ray = kinds["RayCluster"][0]
    for template in [router, *pod_templates(ray)]:
        container = template["spec"]["containers"][0]
        env = {e["name"]: e for e in container["env"]}
        ref = env[WORKER_TOKEN_ENV]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "dense-pd-worker-credential", "key": "workerToken"}
        assert env["MAINSAIL_WORKER_TLS_DIR"]["value"] in {
            m["mountPath"] for m in container["volumeMounts"]
        }
    head = ray["spec"]["headGroupSpec"]["rayStartParams"]
    assert head["include-dashboard"] == "false"
    tls = base64.b64decode(kinds["Secret"][0]["data"]["tls.crt"])
    assert b"-----BEGIN CERTIFICATE-----" in tls and TLS_SERVER_NAME  # issued for the name


def test_every_pod_is_hardened_and_every_container_limited() -> None:
    children = desired_children(OWNER, _spec(), OperatorSettings(), issuer=_counter())
    templates = [t for c in children for t in pod_templates(c)]
    assert len(templates) >= 5  # router, cache, Ray head, two worker groups
    for template in templates:
        pod = template["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] > 0
        assert pod["automountServiceAccountToken"] is False
        for container in [*pod["containers"], *pod.get("initContainers", [])]:
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"] == {"drop": ["ALL"]}
            limits = container["resources"]["limits"]
            assert "memory" in limits and "cpu" in limits, container["name"]
            assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}


def _policies(
    spec: ModelDeploymentSpec | None = None, settings: OperatorSettings | None = None
) -> dict[str, Any]:
    children = desired_children(
        OWNER, spec or _spec(), settings or OperatorSettings(), issuer=_counter()
    )
    return {p["metadata"]["name"]: p["spec"] for p in _by_kind(children)["NetworkPolicy"]}


def _components(selector: dict[str, Any]) -> set[str]:
    (expr,) = selector["matchExpressions"]
    assert selector["matchLabels"] == {"mainsail.dev/deployment": "dense-pd"}
    return set(expr["values"])


def _ports(rule: dict[str, Any]) -> set[int]:
    return {p["port"] for p in rule["ports"]}


PROMETHEUS = {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}


def test_network_policies_admit_only_the_deployments_own_pods() -> None:
    policies = _policies()
    workers, cache, router = (policies[f"dense-pd-{n}"] for n in ("workers", "cache", "router"))
    assert _components(workers["podSelector"]) == {"head", "worker"}
    rule, metrics = workers["ingress"]
    assert _components(rule["from"][0]["podSelector"]) == {"head", "worker", "router"}
    # The metrics port only, and by default only from Prometheus pods of the same namespace
    # (never the whole cluster).
    assert metrics == {"ports": [{"protocol": "TCP", "port": WORKER_METRICS_PORT}],
                       "from": [PROMETHEUS]}  # fmt: skip
    assert _components(cache["podSelector"]) == {"cache"}
    (rule,) = cache["ingress"]
    assert _components(rule["from"][0]["podSelector"]) == {"head", "worker"}
    # The router: its fleet port only from the deployment's Ray pods (where workers run);
    # its client ports from anyone by default (clients need an API key).
    spec = _spec().router
    assert _components(router["podSelector"]) == {"router"}
    fleet, clients = router["ingress"]
    assert _ports(fleet) == {spec.fleet_port}
    assert [_components(p["podSelector"]) for p in fleet["from"]] == [{"head", "worker"}]
    assert _ports(clients) == {spec.http_port, spec.grpc_port} and "from" not in clients
    redis = _by_kind(desired_children(OWNER, _spec(), OperatorSettings(), issuer=_counter()))
    container = redis["StatefulSet"][0]["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][-2:] == ["--requirepass", "$(MAINSAIL_REDIS_PASSWORD)"]


def test_network_peers_come_from_the_spec_else_the_operator_settings() -> None:
    gateway = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "gw"}}}
    lb = {"ipBlock": {"cidr": "10.1.0.0/16", "except": ["10.1.2.0/24"]}}
    monitoring = {"namespaceSelector": {"matchLabels": {"team": "obs"}}, **PROMETHEUS}
    me = {"podSelector": {"matchLabels": {"app.kubernetes.io/component": "operator"}},
          "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ops"}}}  # fmt: skip
    settings = OperatorSettings.from_env(
        {
            "MAINSAIL_OPERATOR_CLIENTS_FROM": json.dumps([gateway]),
            "MAINSAIL_OPERATOR_METRICS_FROM": json.dumps([monitoring]),
            "MAINSAIL_OPERATOR_OPERATOR_PEER": json.dumps(me),
        }
    )
    router_spec = _spec().router
    policies = _policies(settings=settings)
    assert policies["dense-pd-workers"]["ingress"][1]["from"] == [monitoring]
    _, clients, http = policies["dense-pd-router"]["ingress"]
    assert clients["from"] == [gateway]
    # /metrics and the operator's admin calls share the HTTP port: admitted there only.
    assert _ports(http) == {router_spec.http_port} and http["from"] == [monitoring, me]

    # The deployment's own spec.network wins; [] means anyone.
    doc = yaml.safe_load((EXAMPLES / "dense-prefill-decode.yaml").read_text())
    doc["spec"]["network"] = {"clientsFrom": [lb], "metricsFrom": []}
    spec = ModelDeployment.model_validate(doc).spec
    policies = _policies(spec, settings)
    assert "from" not in policies["dense-pd-workers"]["ingress"][1]
    _, clients, http = policies["dense-pd-router"]["ingress"]
    assert clients["from"] == [lb] and "from" not in http
    # Editing the network settings rolls no pod (they are not in config.json).
    before = _by_kind(desired_children(OWNER, _spec(), settings, issuer=_counter()))
    after = _by_kind(desired_children(OWNER, spec, settings, issuer=_counter()))
    assert before["ConfigMap"] == after["ConfigMap"]


@pytest.mark.parametrize(
    ("peer", "message"),
    [
        ({"ipBlock": {"cidr": "10.0.0.0/8"}, **PROMETHEUS}, "a peer sets ipBlock"),
        ({}, "a peer sets ipBlock"),
        ({"ipBlock": {"cidr": "10.0.0.300/8"}}, "does not appear to be an IPv4 or IPv6"),
        ({"podSelector": {"matchExpressions": []}}, "matchExpressions"),
    ],
)
def test_bad_network_peers_are_refused_naming_the_field(peer: Any, message: str) -> None:
    doc = yaml.safe_load((EXAMPLES / "dense-prefill-decode.yaml").read_text())
    doc["spec"]["network"] = {"clientsFrom": [peer]}
    with pytest.raises(ValidationError) as info:
        ModelDeployment.model_validate(doc)
    assert "network.clientsFrom.0" in str(info.value) and message in str(info.value)
    with pytest.raises(ValidationError, match="clients_from"):
        OperatorSettings.from_env({"MAINSAIL_OPERATOR_CLIENTS_FROM": json.dumps([peer])})


def test_worker_pods_name_and_annotate_the_metrics_port() -> None:
    from mainsail.spec.config_document import DeploymentDocument
    from mainsail.workers.cluster_supervisor import spec_factory

    kinds = _by_kind(desired_children(OWNER, _spec(), OperatorSettings(), issuer=_counter()))
    (ray,) = kinds["RayCluster"]
    groups = ray["spec"]["workerGroupSpecs"]
    assert groups
    for group in groups:
        template = group["template"]
        (container,) = template["spec"]["containers"]
        assert container["ports"] == [{"name": "metrics", "containerPort": WORKER_METRICS_PORT}]
        annotations = template["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(WORKER_METRICS_PORT)
    head = ray["spec"]["headGroupSpec"]["template"]
    assert "prometheus.io/port" not in head["metadata"]["annotations"]
    # ... and the cluster worker binds exactly that port.
    spec = _spec()
    document = DeploymentDocument(
        deployment="dense-pd",
        kv_fingerprint=spec.engine.kv_hash().fingerprint(),
        spec=spec,
        router_address="router:50052",
    )
    assert spec_factory(document)("decode", 0).metrics_port == WORKER_METRICS_PORT


def test_workers_register_on_the_routers_fleet_port_never_the_client_port() -> None:
    from mainsail.spec.config_document import DeploymentDocument

    spec = _spec()
    kinds = _by_kind(desired_children(OWNER, spec, OperatorSettings(), issuer=_counter()))
    (router,) = kinds["Deployment"]
    (container,) = router["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["fleet"] == spec.router.fleet_port != ports["grpc"]
    service = next(s for s in kinds["Service"] if s["metadata"]["name"] == "dense-pd-router")
    assert {"name": "fleet", "port": spec.router.fleet_port, "targetPort": "fleet"} in service[
        "spec"
    ]["ports"]
    (config,) = kinds["ConfigMap"]
    document = DeploymentDocument.model_validate_json(config["data"]["config.json"])
    assert document.router_address == f"dense-pd-router.ns.svc:{spec.router.fleet_port}"
