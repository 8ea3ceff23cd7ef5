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
from mainsail.spec.admission import FlowControl
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
    assert from_doc.flow == spec.router.flow


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


def test_flow_bounds_are_the_spec_model_and_the_flat_keys_still_read(tmp_path: Path) -> None:
    """`RouterConfig.flow` is `spec.router.flow`'s model (one contract, its validation);
    `max_per_band`/`max_per_tenant` beside the other keys still land there, and given together
    with `flow` they are refused rather than one silently dropped."""
    base = {"model_name": "m", "model_dir": str(tmp_path)}
    nested = RouterConfig.model_validate({**base, "flow": {"maxPerBand": 8, "maxPerTenant": 4}})
    flat = RouterConfig.model_validate({**base, "max_per_band": 8, "max_per_tenant": 4})
    assert nested.flow == flat.flow == FlowControl(max_per_band=8, max_per_tenant=4)
    assert RouterConfig.model_validate_json(flat.model_dump_json()) == flat
    with pytest.raises(ValueError, match="maxPerTenant must be <= maxPerBand"):
        RouterConfig.model_validate({**base, "max_per_tenant": 5000})
    with pytest.raises(ValueError, match="inside flow only"):
        RouterConfig.model_validate({**base, "flow": {}, "max_per_band": 8})
