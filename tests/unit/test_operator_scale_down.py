"""Which pods a shrinking pool removes (pure), and the reconciler draining them through the
router before KubeRay gets their names (in-memory API, fake router probe)."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from mainsail.operator.fake_kube import InMemoryKubeApi
from mainsail.operator.reconciler import Reconciler
from mainsail.operator.router_probe import StaticRouterProbe
from mainsail.operator.scale_down import ScaleDown, choose_removals
from mainsail.operator.settings import OperatorSettings

pytestmark = pytest.mark.unit
EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "tiny.yaml"
NS = "team-a"


def _pod(name: str, created: str, ready: bool = True, **meta: Any) -> dict[str, Any]:
    status = "True" if ready else "False"
    return {
        "metadata": {"name": name, "creationTimestamp": created, **meta},
        "status": {"conditions": [{"type": "Ready", "status": status}]},
    }


PODS = [
    _pod("w-old", "2026-01-01T00:00:00Z"),
    _pod("w-mid", "2026-01-01T00:01:00Z"),
    _pod("w-new", "2026-01-01T00:02:00Z"),
    _pod("w-sick", "2026-01-01T00:00:30Z", ready=False),
]


def test_unready_pods_go_first_then_the_youngest() -> None:
    assert choose_removals(PODS, [], current=4, desired=2) == ScaleDown(
        ("w-sick", "w-new"), ("w-sick", "w-new")
    )
    assert choose_removals(PODS, [], current=4, desired=1).new == ("w-sick", "w-new", "w-mid")


def test_nothing_removed_without_a_surplus_and_old_names_kept_while_pods_exist() -> None:
    assert choose_removals(PODS, [], current=4, desired=4) == ScaleDown()
    assert choose_removals(PODS, [], current=2, desired=5) == ScaleDown()
    # A later pass (the group already lowered): the chosen names stay, gone pods drop out.
    kept = choose_removals(PODS, ["w-new", "w-gone"], current=3, desired=3)
    assert kept == ScaleDown(("w-new",), ())
    # A further scale-down adds to the list without re-choosing pods already leaving.
    more = choose_removals(PODS, ["w-new"], current=3, desired=2)
    assert more == ScaleDown(("w-new", "w-sick"), ("w-sick",))
    terminating = [*PODS[:3], _pod("w-x", "2026-01-01T00:03:00Z", deletionTimestamp="t")]
    assert choose_removals(terminating, [], current=4, desired=3).new == ("w-new",)


def test_the_reconciler_drains_before_naming_pods_to_kuberay() -> None:
    api = InMemoryKubeApi()
    body = yaml.safe_load(EXAMPLE.read_text())
    body["metadata"]["namespace"] = NS
    api.put(body)
    probe = StaticRouterProbe({"unified": 2})
    clock = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    reconciler = Reconciler(api, OperatorSettings(), clock=lambda: clock, probe=probe)
    reconciler.reconcile(NS, "tiny")
    for i in range(2):  # (the fake API stamps one creation time: readiness decides here)
        pod = _pod(f"tiny-unified-{i}", "", ready=i == 0)
        pod["metadata"].update(
            namespace=NS,
            labels={
                "mainsail.dev/deployment": "tiny",
                "app.kubernetes.io/component": "worker",
                "mainsail.dev/role": "unified",
            },
        )
        api.put({"apiVersion": "v1", "kind": "Pod", **pod})
    api.patch("mainsail.dev/v1alpha1", "ServingPool", NS, "tiny-unified", {"spec": {"replicas": 1}})
    outcome = reconciler.reconcile(NS, "tiny")
    assert outcome is not None and outcome.drained == ["tiny-unified-1"]
    assert probe.drained == ["tiny-unified-1"]
    (group,) = api.get("ray.io/v1", "RayCluster", NS, "tiny")["spec"]["workerGroupSpecs"]  # type: ignore[index]
    assert group["replicas"] == 1
    assert group["scaleStrategy"] == {"workersToDelete": ["tiny-unified-1"]}
    again = reconciler.reconcile(NS, "tiny")
    assert again is not None and again.drained == [] and probe.drained == ["tiny-unified-1"]
    probe.error = "connection refused"
    api.patch("mainsail.dev/v1alpha1", "ServingPool", NS, "tiny-unified", {"spec": {"replicas": 0}})
    failed = reconciler.reconcile(NS, "tiny")
    assert failed is not None and failed.drain_failures == ["tiny-unified-0: connection refused"]
