"""The CRDs and the chart's values schema are generated from the typed source, never edited."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from mainsail.operator.chart_values import ChartValues, values_schema
from mainsail.spec.crd import (
    CEL_RULES,
    ROLES,
    crd_filename,
    render_crds,
    structural_schema,
    to_yaml,
)
from mainsail.spec.deployment import ModelDeploymentSpec
from mainsail.spec.engine_settings import EngineSettings, ExpertParallelRange
from mainsail.spec.model_source import ModelSource, ModelVolume
from mainsail.spec.network import Peer
from mainsail.spec.pools import Autoscaling, Pools
from mainsail.spec.router_settings import RouterSettings
from mainsail.spec.tracing import Tracing

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
REGENERATE = "python -m mainsail.spec.crd --write deploy/crds --write charts/mainsail/crds"


@pytest.mark.parametrize("directory", ["deploy/crds", "charts/mainsail/crds"])
def test_committed_crds_match_a_fresh_rendering(directory: str) -> None:
    crds = render_crds()
    expected = {crd_filename(crd): to_yaml(crd) for crd in crds}
    found = {p.name: p.read_text() for p in (ROOT / directory).glob("*.yaml")}
    assert found == expected, f"{directory} is stale; run `{REGENERATE}`"


def test_committed_values_schema_matches_the_model() -> None:
    committed = json.loads((ROOT / "charts/mainsail/values.schema.json").read_text())
    assert committed == values_schema(), (
        "run `python -m mainsail.operator.chart_values --write charts/mainsail/values.schema.json`"
    )


def test_values_yaml_is_the_models_defaults() -> None:
    values = yaml.safe_load((ROOT / "charts/mainsail/values.yaml").read_text())
    assert ChartValues.model_validate(values) == ChartValues()


def _walk(node: Any, path: str = "") -> list[tuple[str, str, Any]]:
    out = []
    if isinstance(node, dict):
        for key, value in node.items():
            out.append((path, key, value))
            out += _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _walk(value, f"{path}[{i}]")
    return out


def test_schema_is_structural() -> None:
    schema = structural_schema(ModelDeploymentSpec)
    for path, key, value in _walk(schema):
        assert key not in ("$ref", "anyOf", "oneOf", "allOf", "title", "const"), path
        if key == "additionalProperties":
            assert isinstance(value, dict), f"{path}: additionalProperties must be a schema"
        if key in ("exclusiveMinimum", "exclusiveMaximum"):
            assert value is True, path
        if key == "default":
            assert not isinstance(value, dict | list), path


def test_schema_keeps_ranges_enums_patterns_and_nullable() -> None:
    spec = structural_schema(ModelDeploymentSpec)["properties"]
    block = spec["engine"]["properties"]["blockSize"]
    assert (block["minimum"], block["maximum"], block["default"]) == (1, 1024, 16)
    generate = spec["model"]["properties"]["generate"]
    assert generate["enum"] == ["llama", "mixtral"] and generate["nullable"] is True
    assert spec["model"]["properties"]["name"]["pattern"].startswith("^")
    autoscaling = spec["pools"]["properties"]["decode"]["properties"]["autoscaling"]
    assert (
        autoscaling["x-kubernetes-validations"][0]["rule"] == "self.minReplicas <= self.maxReplicas"
    )
    util = autoscaling["properties"]["targetKvUtilization"]
    assert (util["minimum"], util["exclusiveMinimum"], util["maximum"]) == (0, True, 1)
    assert spec["model"]["required"] == ["name"]


def test_serving_pool_has_scale_subresource_and_printer_columns() -> None:
    md, pool = render_crds()
    version = pool["spec"]["versions"][0]
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    columns = [c["name"] for c in md["spec"]["versions"][0]["additionalPrinterColumns"]]
    assert columns == ["Model", "Ready", "Endpoint", "Status", "Age"]
    role = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["role"]
    assert tuple(role["enum"]) == ROLES


def test_roles_match_the_pools_model() -> None:
    assert set(ROLES) == set(Pools.model_fields) - {"cache"}


# Each CEL rule mirrors a pydantic validator: the same counterexamples fail both.
@pytest.mark.parametrize(
    ("model", "document"),
    [
        (Autoscaling, {"minReplicas": 5, "maxReplicas": 2}),
        (Pools, {"prefill": {}}),
        (Pools, {"decode": {}, "unified": {}}),
        (Pools, {"encode": {}}),
        (ModelSource, {"name": "m"}),
        (ModelSource, {"name": "m", "path": "/x", "generate": "llama"}),
        (RouterSettings, {"fleetPort": 50051}),
        (Peer, {}),
        (Peer, {"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}),
        (RouterSettings, {"httpPort": 9000, "grpcPort": 9000}),
        (Tracing, {"enabled": True}),
        (ModelSource, {"name": "m", "path": "rel", "volume": {"hostPath": "/d"}}),
        (ModelSource, {"name": "m", "generate": "llama", "volume": {"hostPath": "/d"}}),
        (ModelVolume, {}),
        (ModelVolume, {"claimName": "c", "hostPath": "/d"}),
        (ModelVolume, {"hostPath": "/d/../etc"}),
        (ModelVolume, {"claimName": "c", "subPath": "a/.."}),
        (ExpertParallelRange, {"min": 4, "max": 2}),
        (EngineSettings, {"tensorParallel": 2, "expertParallel": {"min": 2, "max": 3}}),
        (EngineSettings, {"tensorParallel": 2, "expertParallel": {"min": 1, "max": 4}}),
    ],
)
def test_cel_rules_have_pydantic_twins(model: type, document: dict[str, Any]) -> None:
    assert model in CEL_RULES
    with pytest.raises(ValidationError):
        model.model_validate(document)  # type: ignore[attr-defined]


@pytest.mark.parametrize("path", sorted((ROOT / "deploy/examples").glob("*.yaml")), ids=str)
def test_examples_validate_against_the_spec(path: Path) -> None:
    from mainsail.spec.deployment import load_model_deployment

    for document in yaml.safe_load_all(path.read_text()):
        assert load_model_deployment(document).spec.pools.worker_pools()
