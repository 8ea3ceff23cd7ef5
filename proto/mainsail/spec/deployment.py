"""`ModelDeployment`: the one typed source of the user's resource.

The same models are read by `mainsail up -f x.yaml` (local realization), by the operator (cluster
realization) and rendered into the CRD's OpenAPI schema (`mainsail.spec.crd`), so a field is
declared once. YAML keys are camelCase as Kubernetes users expect; Python attributes are
snake_case. Unknown keys are errors everywhere.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field

from mainsail.spec.adapters import Adapter
from mainsail.spec.engine_settings import EngineSettings
from mainsail.spec.model_source import ModelSource
from mainsail.spec.network import NetworkSettings
from mainsail.spec.pools import Pool, Pools
from mainsail.spec.router_settings import RouterSettings
from mainsail.spec.slo import SLO
from mainsail.spec.spec_model import SpecModel
from mainsail.spec.tracing import Tracing

API_GROUP = "mainsail.dev"
API_VERSION = "v1alpha1"
KIND = "ModelDeployment"


class ModelDeploymentSpec(SpecModel):
    """The spec of a `ModelDeployment`."""

    model: ModelSource
    engine: EngineSettings = EngineSettings()
    pools: Pools = Pools(unified=Pool())
    router: RouterSettings = RouterSettings()
    slo: SLO = SLO()
    adapters: list[Adapter] = Field(default_factory=list)
    network: NetworkSettings = NetworkSettings()
    tracing: Tracing = Tracing()


class ObjectMeta(SpecModel):
    """The part of Kubernetes metadata a local run reads."""

    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)

    # 55, not 63: children append suffixes such as "-unified" and must stay valid names.
    name: str = Field(..., min_length=1, max_length=55, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    namespace: str = "default"


class ModelDeployment(SpecModel):
    """The whole resource as written in YAML (apiVersion, kind, metadata, spec)."""

    api_version: Literal["mainsail.dev/v1alpha1"] = Field(
        "mainsail.dev/v1alpha1", alias="apiVersion"
    )
    kind: Literal["ModelDeployment"] = "ModelDeployment"
    metadata: ObjectMeta
    spec: ModelDeploymentSpec


def load_model_deployment(document: dict[str, Any]) -> ModelDeployment:
    """Validate one parsed YAML document; raises `pydantic.ValidationError` naming the field."""
    return ModelDeployment.model_validate(document)
