"""The base of every `ModelDeployment` section: one place says how YAML keys map to fields.

Keys are camelCase as Kubernetes users expect, attributes snake_case; unknown keys are errors
and values are immutable once read, for `mainsail up`, the operator and the rendered CRD alike.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class SpecModel(BaseModel):
    """Base: camelCase aliases, unknown keys refused, values immutable once read."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )
