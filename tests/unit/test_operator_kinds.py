"""The chart's ClusterRole grants exactly what `mainsail.operator.kinds` says the operator does.

A kind added to the table without its RBAC rule would be a 403 in a cluster; a rule without a
kind in the table is a permission nobody uses (least privilege, see the chart's comment).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mainsail.operator.kinds import ALL, CHILDREN, PLURALS, Use
from mainsail.operator.kube import resource_path

pytestmark = pytest.mark.unit

RBAC = Path(__file__).parents[2] / "charts/mainsail/files/operator-rules.yaml"
READ = {"get", "list", "watch"}
WRITE = {"create", "update", "patch", "delete"}


def cluster_role_rules() -> dict[tuple[str, str], set[str]]:
    """(apiGroup, resource) -> verbs, from the rules the chart grants (one plain YAML file,
    used for the ClusterRole and for every namespace's Role alike)."""
    grants: dict[tuple[str, str], set[str]] = {}
    for rule in yaml.safe_load(RBAC.read_text())["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                grants.setdefault((group, resource), set()).update(rule["verbs"])
    return grants


def test_every_kind_in_the_table_has_the_rbac_its_use_needs() -> None:
    grants = cluster_role_rules()
    for kind in ALL:
        verbs = grants.get((kind.group, kind.plural), set())
        needed = {
            Use.OWNER: READ | {"patch"},
            Use.CHILD: READ | WRITE,
            Use.READ: READ,
            Use.ISSUED: {"get"} | WRITE,
        }[kind.use]
        assert needed <= verbs, f"{kind.kind}: chart grants {sorted(verbs)}"
        if kind.use is Use.ISSUED:
            assert not verbs & {"list", "watch"}, f"{kind.kind} must not be listable"
        if kind.use is Use.READ:
            assert not verbs & WRITE, f"{kind.kind} is read-only, chart grants {sorted(verbs)}"
        if kind.status:
            status = grants.get((kind.group, f"{kind.plural}/status"), set())
            assert {"get", "patch"} <= status, f"{kind.kind}/status"


def test_the_chart_grants_nothing_outside_the_table() -> None:
    known = {(k.group, k.plural) for k in ALL}
    known |= {(k.group, f"{k.plural}/status") for k in ALL if k.status}
    extra = {
        ("", "events"),
        ("events.k8s.io", "events"),
        ("mainsail.dev", "modeldeployments/finalizers"),
    }
    unexpected = set(cluster_role_rules()) - known - extra
    assert not unexpected, f"chart grants resources the operator does not use: {unexpected}"


def test_children_are_written_and_every_kind_has_a_path() -> None:
    assert all(k.use is Use.CHILD for k in CHILDREN)
    assert len(PLURALS) == len(ALL)
    assert (
        resource_path("ray.io/v1", "RayCluster", "ns", "x")
        == "/apis/ray.io/v1/namespaces/ns/rayclusters/x"
    )
    assert resource_path("v1", "Pod", "ns") == "/api/v1/namespaces/ns/pods"
    with pytest.raises(ValueError, match="does not manage v1 Node"):
        resource_path("v1", "Node", "ns", "x")
