"""Images and pull policies: chart values -> operator settings (env) -> every container."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from mainsail.operator.chart_values import ChartValues
from mainsail.operator.desired import desired_children
from mainsail.operator.naming import Owner
from mainsail.operator.settings import OperatorSettings
from mainsail.spec.deployment import load_model_deployment

pytestmark = pytest.mark.unit
EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples"
OWNER = Owner(name="pd", namespace="ns", uid="uid-1", generation=1)


def _containers(node: Any) -> list[dict[str, Any]]:
    """Every container and init container of every pod template under `node`."""
    found: list[dict[str, Any]] = []
    if isinstance(node, dict):
        for key in ("initContainers", "containers"):
            if isinstance(node.get(key), list):
                found += node[key]
        for value in node.values():
            found += _containers(value)
    elif isinstance(node, list):
        for item in node:
            found += _containers(item)
    return found


@pytest.mark.parametrize("example", ["tiny.yaml", "dense-prefill-decode.yaml"])
def test_every_container_gets_the_pull_policy_of_its_image(example: str) -> None:
    settings = OperatorSettings.from_env(
        {
            "MAINSAIL_OPERATOR_ROUTER_IMAGE": "mainsail/router:abc",
            "MAINSAIL_OPERATOR_ROUTER_PULL_POLICY": "Never",
            "MAINSAIL_OPERATOR_WORKER_IMAGE": "mainsail/worker:def",
            "MAINSAIL_OPERATOR_WORKER_PULL_POLICY": "Always",
            "MAINSAIL_OPERATOR_REDIS_IMAGE": "mainsail/redis:123",
        }
    )
    spec = load_model_deployment(yaml.safe_load((EXAMPLES / example).read_text())).spec
    containers = _containers(desired_children(OWNER, spec, settings))
    expected = {
        "mainsail/router:abc": "Never",
        "mainsail/worker:def": "Always",
        "mainsail/redis:123": "IfNotPresent",
    }
    seen = {c["image"] for c in containers}
    assert {"mainsail/router:abc", "mainsail/worker:def", "mainsail/redis:123"} <= seen
    for container in containers:
        assert container["imagePullPolicy"] == expected[container["image"]], container["name"]


def test_a_bad_pull_policy_is_refused_naming_the_setting() -> None:
    with pytest.raises(ValueError, match="router_pull_policy"):
        OperatorSettings.from_env({"MAINSAIL_OPERATOR_ROUTER_PULL_POLICY": "Sometimes"})


def test_chart_defaults_name_the_operators_default_images() -> None:
    """The chart's defaults, rendered as the template does (empty tag: appVersion), are the
    operator's own defaults: one source for both."""
    chart = yaml.safe_load((EXAMPLES.parents[1] / "charts/mainsail/Chart.yaml").read_text())
    images = ChartValues().images
    settings = OperatorSettings()

    def ref(image: Any) -> str:
        return f"{image.repository}:{image.tag or chart['appVersion']}"

    assert ref(images.router) == settings.router_image
    assert ref(images.worker) == settings.worker_image
    assert ref(images.cache) == settings.redis_image
    assert images.router.pull_policy == settings.router_pull_policy == "IfNotPresent"


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"images": {"router": {"pullPolicy": "Sometimes"}}}, "pullPolicy"),
        ({"images": {"router": {"repository": ""}}}, "repository"),
        ({"images": {"router": {"repository": "a/b", "tag": "bad tag"}}}, "tag"),
        ({"images": {"worker": {"repository": "a/b:1.0"}}}, "repository"),
        ({"image": {"repository": "a/b"}}, "image"),
    ],
)
def test_chart_values_refuse_bad_images(values: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        ChartValues.model_validate(values)
