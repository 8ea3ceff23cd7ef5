"""The router reads the operator's configuration document into the same RouterConfig that
`mainsail up` builds from the same YAML: one source for roles (prefill/decode), SLO classes,
flow control and admission, adapters, the routing profile and the KV parameters. Checked
for every shipped example."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mainsail.cli.defaults import TINY_DEPLOYMENT
from mainsail.cli.router_cmd import router_config_from_document
from mainsail.operator.desired_config import deployment_config
from mainsail.operator.naming import Owner
from mainsail.router.settings import RouterConfig
from mainsail.spec.config_document import DeploymentDocument
from mainsail.spec.deployment import ModelDeployment

pytestmark = pytest.mark.unit

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "deploy" / "examples").glob("*.yaml"))


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_cluster_router_config_equals_mainsail_up(example: Path) -> None:
    deployment = ModelDeployment.model_validate(yaml.safe_load(example.read_text()))
    owner = Owner(name=deployment.metadata.name, namespace="ns", uid="u1")
    doc = deployment_config(owner, deployment.spec, ["redis://c:6379/0"])
    from_doc = router_config_from_document(doc, host="127.0.0.1")
    local = RouterConfig.from_deployment(deployment, from_doc.model_dir, host="127.0.0.1")
    assert from_doc == local
    assert from_doc.kv_hash.fingerprint() == doc["kvFingerprint"]
    spec = deployment.spec
    if spec.pools.prefill is not None:
        assert from_doc.disaggregated and from_doc.request_role == "decode"
    assert from_doc.adapters == tuple(a.name for a in spec.adapters)
    assert from_doc.slo == spec.slo and from_doc.profile == spec.router.profile
    assert from_doc.admission == spec.router.admission  # flow control (docs/flow_control.md)
    assert from_doc.max_per_band == spec.router.flow.max_per_band
    assert from_doc.max_per_tenant == spec.router.flow.max_per_tenant


def test_pool_sizes_stay_out_of_the_document() -> None:
    """Scaling a pool must not change `config.json` (its hash would roll the router)."""
    deployment = ModelDeployment.model_validate(yaml.safe_load(TINY_DEPLOYMENT))
    owner = Owner(name="tiny", namespace="default", uid="u1")
    doc = deployment_config(owner, deployment.spec, [])
    scaled = yaml.safe_load(TINY_DEPLOYMENT)
    scaled["spec"]["pools"]["unified"]["replicas"] = 7
    doc7 = deployment_config(owner, ModelDeployment.model_validate(scaled).spec, [])
    assert doc == doc7
    parsed = DeploymentDocument.model_validate(doc)
    assert parsed.router_address == "tiny-router.default.svc:50052"


def test_inconsistent_fingerprint_is_refused() -> None:
    deployment = ModelDeployment.model_validate(yaml.safe_load(TINY_DEPLOYMENT))
    doc = deployment_config(Owner(name="tiny", namespace="d", uid="u"), deployment.spec, [])
    doc["kvFingerprint"] = "blake2b-64-chained-v1/b32/s0"
    with pytest.raises(ValueError, match="kvFingerprint"):
        router_config_from_document(doc)


def test_a_document_without_spec_is_refused_naming_it() -> None:
    deployment = ModelDeployment.model_validate(yaml.safe_load(TINY_DEPLOYMENT))
    doc = deployment_config(Owner(name="tiny", namespace="d", uid="u"), deployment.spec, [])
    del doc["spec"]
    with pytest.raises(ValueError, match="spec"):
        router_config_from_document(doc)
