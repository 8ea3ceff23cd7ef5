"""Render the CustomResourceDefinitions from the typed spec: the contract written once.

Why generated: the API server must refuse exactly what `mainsail up -f` refuses, so the
OpenAPI schema is derived from the same pydantic models (`mainsail.spec.deployment`) instead of
being kept by hand. The rendering turns pydantic's JSON Schema into a Kubernetes *structural*
schema: `$ref`s inlined, titles dropped, `Optional` (anyOf with null) turned into `nullable`,
JSON-Schema-2020 exclusive bounds turned into OpenAPI 3.0 booleans, defaults kept for scalars
only (object defaults stay in the models, so stored objects keep what the user wrote).

Cross-field rules that JSON Schema cannot say (pydantic `model_validator`s) are written here as
CEL `x-kubernetes-validations`, keyed by the model class they belong to, so a rule lands on every
place that model appears. `tests/unit/test_crd_schema.py` checks each rule against its pydantic
twin on the same inputs, and the committed YAML against a fresh rendering.

Usage: ``python -m mainsail.spec.crd`` prints every CRD as one YAML stream;
``python -m mainsail.spec.crd --write DIR`` writes one file per CRD.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field

from mainsail.spec.deployment import API_GROUP, API_VERSION, KIND, ModelDeploymentSpec
from mainsail.spec.engine_settings import EngineSettings, ExpertParallelRange
from mainsail.spec.model_source import ModelSource, ModelVolume
from mainsail.spec.network import Peer
from mainsail.spec.pools import Autoscaling, Pool, Pools
from mainsail.spec.router_settings import RouterSettings
from mainsail.spec.spec_model import SpecModel
from mainsail.spec.tracing import Tracing

Schema = dict[str, Any]

SERVING_POOL_KIND = "ServingPool"
ROLES: tuple[str, ...] = ("unified", "encode", "prefill", "decode")
Role = Literal["unified", "encode", "prefill", "decode"]
# Children are named `<deployment>-<role>` and must stay DNS labels (63): "-unified" is 8.
MAX_DEPLOYMENT_NAME_LENGTH = 55
_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


# --- Status and child-resource models (the operator writes them; the CRD renders them) ---


class Condition(SpecModel):
    """One status condition, as `kubectl wait --for=condition=Ready` reads it."""

    type: str = Field(..., min_length=1, max_length=316)
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(..., max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    message: str = Field("", max_length=32768)
    last_transition_time: str = Field(..., description="RFC 3339 time the status last changed.")
    observed_generation: int | None = Field(None, ge=0)


class PoolStatus(SpecModel):
    """One role's replicas as the ModelDeployment reports them."""

    serving_pool: str = Field(..., description="Name of the ServingPool child.")
    replicas: int = Field(0, ge=0, description="Desired workers (ServingPool spec.replicas).")
    ready_replicas: int = Field(0, ge=0, description="Workers whose pods are Ready.")
    registered_workers: int | None = Field(
        None,
        ge=0,
        description="Workers registered with the router (serving); absent when the router "
        "could not be read.",
    )


class Recommendation(SpecModel):
    """A raw replica count the autoscaler's load reading asked for, from ``time`` on."""

    time: str = Field(..., description="RFC 3339 time the load started asking for it.")
    replicas: int = Field(..., ge=0)


class AutoscalerStatus(SpecModel):
    """The autoscaler's last pass over one pool (see docs/operator.md#autoscaling)."""

    desired_replicas: int = Field(..., ge=0, description="What it set (or kept).")
    recommended_replicas: int = Field(
        ..., ge=0, description="What the load alone asked for, before bounds and the delay."
    )
    reason: str = Field("", max_length=1024, description="The signal that decided, in words.")
    last_scale_time: str | None = Field(None, description="RFC 3339 time it last changed it.")
    recommendations: list[Recommendation] = Field(
        default_factory=list,
        max_length=1024,
        description="Changes of the raw recommendation over the scale-down window, oldest "
        "first (and the one in effect when it began): the stabilisation history, kept here so "
        "the scale-down delay survives an operator restart.",
    )


class ExpertParallelStatus(SpecModel):
    """The expert-parallel autoscaler's last pass over one pool (docs/operator.md)."""

    current: int = Field(..., ge=0, description="Degree the pool's workers run (the lowest).")
    target: int = Field(..., ge=0, description="Degree it asked the workers for (or kept).")
    recommended: int = Field(
        ..., ge=0, description="What the load alone asked for, before cooldown and delay."
    )
    reason: str = Field("", max_length=1024, description="The signals that decided, in words.")
    imbalance: float = Field(
        1.0, ge=0, description="Busiest expert rank's load over the mean rank's (1 = even)."
    )
    last_change: str | None = Field(None, description="RFC 3339 time it last changed it.")
    lower_since: str | None = Field(
        None,
        description="RFC 3339 time since which the load has asked for fewer ranks (the "
        "scale-down delay's start; kept so it survives an operator restart).",
    )


class ModelDeploymentStatus(SpecModel):
    """What the operator observed about a ModelDeployment's children."""

    observed_generation: int | None = Field(None, ge=0)
    ready: str | None = Field(
        None,
        description="Pools with all their workers registered with the router / pools, e.g. `2/3`.",
    )
    endpoint: str | None = Field(None, description="In-cluster URL of the router (HTTP).")
    kv_fingerprint: str | None = Field(None, description="KV hash parameters handed out.")
    pools: dict[str, PoolStatus] = Field(default_factory=dict)
    autoscaling: dict[str, AutoscalerStatus] = Field(
        default_factory=dict, description="Per autoscaled role, written by the autoscaler."
    )
    expert_parallel: dict[str, ExpertParallelStatus] = Field(
        default_factory=dict,
        description="Per role of a sharded mixture-of-experts deployment, written by the "
        "expert-parallel autoscaler.",
    )
    conditions: list[Condition] = Field(default_factory=list)


class ServingPoolSpec(SpecModel):
    """One role's worker pool; `replicas` is the field `/scale` drives."""

    deployment: str = Field(..., min_length=1, max_length=63, pattern=_DNS_LABEL)
    role: Role
    replicas: int = Field(1, ge=0, le=10_000, description="Desired workers.")
    template: Pool = Field(..., description="The pool settings copied from the deployment.")


class ServingPoolStatus(SpecModel):
    """Observed workers of the pool, including the selector HPA uses to find them."""

    observed_generation: int | None = Field(None, ge=0)
    replicas: int = Field(0, ge=0)
    ready_replicas: int = Field(0, ge=0)
    selector: str = Field("", description="Label selector of the pool's worker pods.")


# Cross-field rules, keyed by the model whose `model_validator` they mirror.
CEL_RULES: dict[type[BaseModel], list[Schema]] = {
    Autoscaling: [
        {
            "rule": "self.minReplicas <= self.maxReplicas",
            "message": "minReplicas must be <= maxReplicas",
            "fieldPath": ".minReplicas",
            "reason": "FieldValueInvalid",
        }
    ],
    ExpertParallelRange: [
        {
            "rule": "self.min <= self.max",
            "message": "min must be <= max",
            "fieldPath": ".min",
            "reason": "FieldValueInvalid",
        }
    ],
    EngineSettings: [
        {
            "rule": "!has(self.expertParallel) || (self.expertParallel.min % self.tensorParallel"
            " == 0 && self.expertParallel.max % self.tensorParallel == 0)",
            "message": "expertParallel.min and .max must be multiples of tensorParallel",
            "fieldPath": ".expertParallel",
            "reason": "FieldValueInvalid",
        }
    ],
    Pools: [
        {
            "rule": "has(self.prefill) == has(self.decode)",
            "message": "prefill and decode must be both set or both unset",
            "reason": "FieldValueInvalid",
        },
        {
            "rule": "has(self.unified) || has(self.prefill)",
            "message": "set unified, or both prefill and decode",
            "reason": "FieldValueRequired",
        },
    ],
    Peer: [
        {
            "rule": "has(self.ipBlock) != (has(self.podSelector) || has(self.namespaceSelector))",
            "message": "a peer sets ipBlock, or podSelector and/or namespaceSelector",
            "reason": "FieldValueInvalid",
        }
    ],
    RouterSettings: [
        {
            "rule": "self.httpPort != self.grpcPort && self.fleetPort != self.httpPort"
            " && self.fleetPort != self.grpcPort",
            "message": "httpPort, grpcPort and fleetPort must differ",
            "fieldPath": ".fleetPort",
            "reason": "FieldValueInvalid",
        }
    ],
    ModelSource: [
        {
            "rule": "has(self.path) != has(self.generate)",
            "message": "set exactly one of path or generate",
            "reason": "FieldValueInvalid",
        },
        {
            "rule": "!has(self.volume) || (has(self.path) && self.path.startsWith('/'))",
            "message": "volume needs an absolute path (where it is mounted)",
            "fieldPath": ".volume",
            "reason": "FieldValueInvalid",
        },
    ],
    ModelVolume: [
        {
            "rule": "has(self.claimName) != has(self.hostPath)",
            "message": "set exactly one of claimName or hostPath",
            "reason": "FieldValueInvalid",
        },
        {
            "rule": "!has(self.hostPath) || !self.hostPath.matches('(^|/)[.][.](/|$)')",
            "message": "hostPath must not contain ..",
            "fieldPath": ".hostPath",
            "reason": "FieldValueInvalid",
        },
        {
            "rule": "!has(self.subPath) || !self.subPath.matches('(^|/)[.][.](/|$)')",
            "message": "subPath must not contain ..",
            "fieldPath": ".subPath",
            "reason": "FieldValueInvalid",
        },
    ],
    Tracing: [
        {
            "rule": "!self.enabled || has(self.endpoint)",
            "message": "endpoint is required when tracing is enabled",
            "fieldPath": ".endpoint",
            "reason": "FieldValueRequired",
        }
    ],
}

_KEPT = {
    "type",
    "properties",
    "required",
    "items",
    "description",
    "enum",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "additionalProperties",
    "nullable",
    "default",
    "format",
}
_DROPPED = {"title", "$defs"}


def structural_schema(model: type[BaseModel]) -> Schema:
    """The Kubernetes structural OpenAPI v3 schema of `model` (camelCase keys)."""
    source = model.model_json_schema(by_alias=True)
    rules = {cls.__name__: rules for cls, rules in CEL_RULES.items()}
    return _convert(source, source.get("$defs", {}), rules, model.__name__)


def _convert(
    node: Schema, defs: Schema, rules: dict[str, list[Schema]], name: str | None
) -> Schema:
    node = dict(node)
    if "$ref" in node:  # inline the definition; sibling keys (description, default) win
        ref_name = node.pop("$ref").rsplit("/", 1)[-1]
        return _convert({**defs[ref_name], **node}, defs, rules, ref_name)
    nullable = False
    if "anyOf" in node:
        variants = [v for v in node.pop("anyOf") if v != {"type": "null"}]
        if len(variants) != 1:
            raise ValueError(f"only Optional[X] unions are supported, got {variants!r}")
        nullable = True
        inner = dict(variants[0])
        ref_name = inner.pop("$ref", "").rsplit("/", 1)[-1] or None
        merged = {**(defs[ref_name] if ref_name else {}), **inner, **node}
        converted = _convert(merged, defs, rules, ref_name)
        converted["nullable"] = True
        return converted
    if "const" in node:
        node["enum"] = [node.pop("const")]
    out: Schema = {}
    for key, value in node.items():
        if key in _DROPPED:
            continue
        if key not in _KEPT:
            raise ValueError(f"schema keyword {key!r} has no structural equivalent")
        if key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        elif key == "properties":
            out[key] = {k: _convert(v, defs, rules, None) for k, v in value.items()}
        elif key == "items":
            out[key] = _convert(value, defs, rules, None)
        elif key == "additionalProperties":
            if isinstance(value, dict):
                out[key] = _convert(value, defs, rules, None)
            # `false` is pydantic's extra="forbid": the API server prunes and, with
            # kubectl's strict field validation, refuses unknown fields anyway.
        elif key == "default":
            if value is not None and not isinstance(value, dict | list):
                out[key] = value
        else:
            out[key] = copy.deepcopy(value)
    if nullable:
        out["nullable"] = True
    if name is not None and name in rules:
        out["x-kubernetes-validations"] = copy.deepcopy(rules[name])
    return out


def _status_schema(model: type[BaseModel]) -> Schema:
    schema = structural_schema(model)
    conditions = schema.get("properties", {}).get("conditions")
    if conditions is not None:
        conditions["x-kubernetes-list-type"] = "map"
        conditions["x-kubernetes-list-map-keys"] = ["type"]
    return schema


def _crd(
    kind: str,
    plural: str,
    short_names: list[str],
    spec: Schema,
    status: Schema,
    columns: list[Schema],
    subresources: Schema,
    root_rules: list[Schema] | None = None,
) -> Schema:
    root: Schema = {
        "type": "object",
        "description": f"{kind} ({API_GROUP}/{API_VERSION}); see docs/operator.md.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }
    if root_rules:
        root["x-kubernetes-validations"] = root_rules
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{API_GROUP}",
            "labels": {"app.kubernetes.io/part-of": "mainsail"},
        },
        "spec": {
            "group": API_GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": short_names,
                "categories": ["mainsail"],
            },
            "versions": [
                {
                    "name": API_VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": root},
                    "subresources": subresources,
                    "additionalPrinterColumns": columns,
                }
            ],
        },
    }


def _age() -> Schema:
    return {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


def model_deployment_crd() -> Schema:
    """The user's resource: one spec for every role, with status and printer columns."""
    return _crd(
        KIND,
        "modeldeployments",
        ["mdep"],
        structural_schema(ModelDeploymentSpec),
        _status_schema(ModelDeploymentStatus),
        [
            {"name": "Model", "type": "string", "jsonPath": ".spec.model.name"},
            {"name": "Ready", "type": "string", "jsonPath": ".status.ready"},
            {"name": "Endpoint", "type": "string", "jsonPath": ".status.endpoint"},
            {
                "name": "Status",
                "type": "string",
                "jsonPath": '.status.conditions[?(@.type=="Ready")].reason',
            },
            _age(),
        ],
        {"status": {}},
        root_rules=[
            {
                "rule": f"self.metadata.name.size() <= {MAX_DEPLOYMENT_NAME_LENGTH}",
                "message": f"metadata.name must be at most {MAX_DEPLOYMENT_NAME_LENGTH} "
                "characters (children append a role suffix)",
                "reason": "FieldValueInvalid",
            }
        ],
    )


def serving_pool_crd() -> Schema:
    """One worker pool of a deployment, with `/scale` so kubectl scale, HPA and KEDA work."""
    return _crd(
        SERVING_POOL_KIND,
        "servingpools",
        ["spool"],
        structural_schema(ServingPoolSpec),
        _status_schema(ServingPoolStatus),
        [
            {"name": "Deployment", "type": "string", "jsonPath": ".spec.deployment"},
            {"name": "Role", "type": "string", "jsonPath": ".spec.role"},
            {"name": "Desired", "type": "integer", "jsonPath": ".spec.replicas"},
            {"name": "Ready", "type": "integer", "jsonPath": ".status.readyReplicas"},
            _age(),
        ],
        {
            "status": {},
            "scale": {
                "specReplicasPath": ".spec.replicas",
                "statusReplicasPath": ".status.replicas",
                "labelSelectorPath": ".status.selector",
            },
        },
    )


def render_crds() -> list[Schema]:
    """Every CRD Mainsail installs, in apply order."""
    return [model_deployment_crd(), serving_pool_crd()]


def crd_filename(crd: Schema) -> str:
    """`<plural>.<group>.yaml`, the file name used in deploy/crds and the chart."""
    return f"{crd['metadata']['name']}.yaml"


def to_yaml(crd: Schema) -> str:
    """Stable YAML text (key order kept) with a generated-file header."""
    header = "# Generated by `python -m mainsail.spec.crd --write DIR`; do not edit.\n"
    return header + yaml.safe_dump(crd, sort_keys=False, width=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mainsail.spec.crd", description=__doc__)
    parser.add_argument("--write", type=Path, action="append", default=[], metavar="DIR")
    args = parser.parse_args(argv)
    crds = render_crds()
    if not args.write:
        sys.stdout.write("---\n".join(to_yaml(crd) for crd in crds))
    for directory in args.write:
        directory.mkdir(parents=True, exist_ok=True)
        for crd in crds:
            (directory / crd_filename(crd)).write_text(to_yaml(crd))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
