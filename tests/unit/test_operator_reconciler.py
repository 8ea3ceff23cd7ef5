"""`Reconciler` on the in-memory `KubeApi` (`mainsail.operator.fake_kube`): the faster tier of
what tests/integration/test_operator_cluster.py checks against a real API server."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from mainsail.operator.fake_kube import InMemoryKubeApi, merge_patch
from mainsail.operator.kube import KubeError
from mainsail.operator.naming import LABEL_DEPLOYMENT
from mainsail.operator.reconciler import Reconciler
from mainsail.operator.router_probe import StaticRouterProbe
from mainsail.operator.settings import OperatorSettings

pytestmark = pytest.mark.unit
EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "tiny.yaml"
MD = "mainsail.dev/v1alpha1"
NS = "team-a"
T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def _deployment(api: InMemoryKubeApi, **spec_changes: Any) -> dict[str, Any]:
    body = yaml.safe_load(EXAMPLE.read_text())
    body["metadata"]["namespace"] = NS
    body["spec"].update(spec_changes)
    return api.put(body)


def _kinds(api: InMemoryKubeApi) -> list[str]:
    return sorted(f"{k}/{name}" for (_, k, _, name) in api.objects if k != "ModelDeployment")


def _reconciler(api: InMemoryKubeApi, probe: StaticRouterProbe | None = None) -> Reconciler:
    probe = probe or StaticRouterProbe(error="no router in this test")
    return Reconciler(api, OperatorSettings(), clock=lambda: T0, probe=probe)


def test_first_pass_creates_every_child_and_the_second_writes_nothing() -> None:
    api = InMemoryKubeApi()
    _deployment(api)
    reconciler = _reconciler(api)
    outcome = reconciler.reconcile(NS, "tiny")
    assert outcome is not None and outcome.invalid is None and not outcome.conflicts
    assert _kinds(api) == [
        "ConfigMap/tiny-config",
        "Deployment/tiny-router",
        "NetworkPolicy/tiny-cache",
        "NetworkPolicy/tiny-router",
        "NetworkPolicy/tiny-workers",
        "RayCluster/tiny",
        "Secret/tiny-worker-credential",
        "Service/tiny-cache",
        "Service/tiny-router",
        "Service/tiny-router-peers",
        "ServingPool/tiny-unified",
        "StatefulSet/tiny-cache",
    ]
    assert sorted(outcome.created) == _kinds(api)
    for (_, kind, _, _), obj in api.objects.items():
        if kind != "ModelDeployment":
            assert obj["metadata"]["labels"][LABEL_DEPLOYMENT] == "tiny"
    status = api.get(MD, "ModelDeployment", NS, "tiny")["status"]  # type: ignore[index]
    assert {c["type"] for c in status["conditions"]} >= {"Ready"}
    writes = api.writes
    again = reconciler.reconcile(NS, "tiny")
    assert again is not None and again.writes == 0
    assert api.writes == writes  # not even a status patch


def test_a_deleted_child_is_put_back_and_an_edited_one_restored() -> None:
    api = InMemoryKubeApi()
    _deployment(api)
    reconciler = _reconciler(api)
    reconciler.reconcile(NS, "tiny")
    router = next(k for k in api.objects if k[1] == "Deployment")
    api.remove(*router)
    service = next(k for k in api.objects if k[1] == "Service")
    api.objects[service]["spec"]["ports"] = []
    outcome = reconciler.reconcile(NS, "tiny")
    assert outcome is not None
    assert outcome.created == [f"Deployment/{router[3]}"]
    assert outcome.updated == [f"Service/{service[3]}"]
    assert api.objects[service]["spec"]["ports"]


def test_a_child_the_spec_no_longer_asks_for_is_deleted() -> None:
    api = InMemoryKubeApi()
    body = _deployment(api)
    reconciler = _reconciler(api)
    reconciler.reconcile(NS, "tiny")
    assert any(k[1] == "StatefulSet" for k in api.objects)
    body["spec"]["pools"]["cache"] = {"enabled": False}
    api.put(body)
    outcome = reconciler.reconcile(NS, "tiny")
    assert outcome is not None and "StatefulSet/tiny-cache" in outcome.deleted
    assert not any(k[1] == "StatefulSet" for k in api.objects)


def test_someone_elses_object_with_a_childs_name_is_a_conflict_not_overwritten() -> None:
    api = InMemoryKubeApi()
    _deployment(api)
    foreign = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "tiny-config", "namespace": NS, "labels": {"team": "b"}},
        "data": {"mine": "yes"},
    }
    api.put(foreign)
    outcome = _reconciler(api).reconcile(NS, "tiny")
    assert outcome is not None and outcome.conflicts == ["ConfigMap/tiny-config"]
    assert api.get("v1", "ConfigMap", NS, "tiny-config")["data"] == {"mine": "yes"}  # type: ignore[index]


def test_an_invalid_spec_is_reported_once_in_status_naming_the_field() -> None:
    api = InMemoryKubeApi()
    body = _deployment(api)
    body["spec"]["engine"]["blockSize"] = -1
    api.objects[(MD, "ModelDeployment", NS, "tiny")] = body
    reconciler = _reconciler(api)
    outcome = reconciler.reconcile(NS, "tiny")
    assert outcome is not None and outcome.invalid is not None
    ready = api.get(MD, "ModelDeployment", NS, "tiny")["status"]["conditions"][0]  # type: ignore[index]
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert "engine.blockSize" in ready["message"]
    assert _kinds(api) == []
    writes = api.writes
    reconciler.reconcile(NS, "tiny")
    assert api.writes == writes


def test_a_missing_deployment_is_nothing_to_do() -> None:
    assert _reconciler(InMemoryKubeApi()).reconcile(NS, "absent") is None


def test_the_fake_keeps_the_api_servers_rules() -> None:
    api = InMemoryKubeApi()
    cm = api.put({"apiVersion": "v1", "kind": "ConfigMap",
                  "metadata": {"name": "c", "namespace": NS, "labels": {"a": "1"}}})  # fmt: skip
    with pytest.raises(KubeError) as info:
        api.delete("v1", "ConfigMap", NS, "c", uid="not-its-uid")
    assert info.value.status == 409
    with pytest.raises(KubeError):
        api.patch_status("v1", "ConfigMap", NS, "absent", {"x": 1})
    with pytest.raises(ValueError, match="does not manage v1 Node"):
        api.get("v1", "Node", NS, "s")
    assert [o["metadata"]["name"] for o in api.list("v1", "ConfigMap", NS, "a=1")] == ["c"]
    assert api.list("v1", "ConfigMap", NS, "a=2") == []
    api.delete("v1", "ConfigMap", NS, "c", uid=cm["metadata"]["uid"])
    assert api.get("v1", "ConfigMap", NS, "c") is None
    assert merge_patch({"a": {"b": 1, "c": 2}}, {"a": {"b": None, "d": 3}}) == {
        "a": {"c": 2, "d": 3}
    }


def test_status_asks_the_router_which_workers_registered() -> None:
    """Ready needs the router Deployment ready and the pool's workers registered with it."""
    api = InMemoryKubeApi()
    _deployment(api)
    probe = StaticRouterProbe({"unified": 1})
    reconciler = _reconciler(api, probe)
    reconciler.reconcile(NS, "tiny")
    for kind, name in (("Deployment", "tiny-router"), ("StatefulSet", "tiny-cache")):
        obj = api.get("apps/v1", kind, NS, name)
        assert obj is not None
        want = obj["spec"]["replicas"]
        generation = obj["metadata"].get("generation", 1)
        status = {"readyReplicas": want, "replicas": want, "observedGeneration": generation}
        api.patch_status("apps/v1", kind, NS, name, status)
    reconciler.reconcile(NS, "tiny")
    assert probe.urls[-1] == "http://tiny-router.team-a.svc:8000/metrics"

    def ready() -> tuple[str, str, str]:
        status = api.get(MD, "ModelDeployment", NS, "tiny")["status"]  # type: ignore[index]
        cond = next(c for c in status["conditions"] if c["type"] == "Ready")
        return cond["status"], cond["reason"], status["ready"]

    assert ready() == ("False", "PoolsNotReady", "0/1")
    probe.counts = {"unified": 2}
    reconciler.reconcile(NS, "tiny")
    assert ready() == ("True", "DeploymentReady", "1/1")
    probe.error = "GET http://tiny-router...: connection refused"
    reconciler.reconcile(NS, "tiny")
    assert ready() == ("False", "RouterUnreachable", "0/1")


class _NoDeployments(InMemoryKubeApi):
    """The API server as an operator whose RBAC lacks writes of apps/v1 Deployments sees it."""

    refuse = True

    def apply(self, obj: Any) -> Any:
        if self.refuse and obj["kind"] == "Deployment":
            name = obj["metadata"]["name"]
            raise KubeError(403, f'deployments.apps "{name}" is forbidden: cannot patch')
        return super().apply(obj)


def test_a_refused_write_stops_the_pass_names_the_child_and_the_next_pass_finishes() -> None:
    """A pass cut short (RBAC without one kind here; an operator killed mid-pass is the same
    state) leaves the children before it; status says why; a later pass, by a new reconciler
    as after a restart, adds only what is missing: the same objects, no second copy."""
    api = _NoDeployments()
    _deployment(api)
    outcome = _reconciler(api).reconcile(NS, "tiny")
    assert outcome is not None
    assert outcome.failed is not None and outcome.failed.startswith("Deployment/tiny-router: ")
    assert "HTTP 403" in outcome.failed
    assert "Deployment/tiny-router" not in _kinds(api) and "RayCluster/tiny" in _kinds(api)
    status = api.get(MD, "ModelDeployment", NS, "tiny")["status"]  # type: ignore[index]
    ready = status["conditions"][0]
    assert (ready["type"], ready["status"], ready["reason"]) == ("Ready", "False", "ApplyFailed")
    assert "Deployment/tiny-router" in ready["message"] and "forbidden" in ready["message"]
    before = {k: o["metadata"]["uid"] for k, o in api.objects.items()}

    api.refuse = False
    again = _reconciler(api).reconcile(NS, "tiny")
    assert again is not None and again.failed is None
    assert again.created == ["Deployment/tiny-router"] and again.updated == []
    assert {k: api.objects[k]["metadata"]["uid"] for k in before} == before
    ready = api.get(MD, "ModelDeployment", NS, "tiny")["status"]["conditions"][0]  # type: ignore[index]
    assert ready["reason"] != "ApplyFailed"
