"""The router reads the operator's configuration document into the same RouterConfig that
`mainsail up` builds: one source for KV parameters, profile and SLOs."""

from __future__ import annotations

import pytest
import yaml

from mainsail.cli.defaults import TINY_DEPLOYMENT
from mainsail.cli.router_cmd import router_config_from_document
from mainsail.operator.desired_config import deployment_config
from mainsail.operator.naming import Owner
from mainsail.router.settings import RouterConfig
from mainsail.spec.deployment import ModelDeployment

pytestmark = pytest.mark.unit


def test_operator_document_and_local_run_give_the_same_router_settings() -> None:
    deployment = ModelDeployment.model_validate(yaml.safe_load(TINY_DEPLOYMENT))
    owner = Owner(name="tiny", namespace="default", uid="u1")
    doc = deployment_config(owner, deployment.spec, ["redis://tiny-cache:6379/0"])
    from_doc = router_config_from_document(doc, host="127.0.0.1")
    local = RouterConfig.from_deployment(deployment, from_doc.model_dir, host="127.0.0.1")
    assert from_doc == local
    assert from_doc.kv_hash.fingerprint() == doc["kvFingerprint"]


def test_inconsistent_fingerprint_is_refused() -> None:
    deployment = ModelDeployment.model_validate(yaml.safe_load(TINY_DEPLOYMENT))
    doc = deployment_config(Owner(name="tiny", namespace="d", uid="u"), deployment.spec, [])
    doc["kvFingerprint"] = "blake2b-64-chained-v1/b32/s0"
    with pytest.raises(ValueError, match="kvFingerprint"):
        router_config_from_document(doc)
