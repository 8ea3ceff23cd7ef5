"""The Helm chart's values, typed once: `values.schema.json` is generated from these models.

Why: Helm validates `values.yaml` and every `--set` against `values.schema.json`; writing that
schema by hand would be a second copy of what the templates read. `python -m
mainsail.operator.chart_values --write charts/mainsail/values.schema.json` regenerates it, and a
unit test fails when the committed file or `values.yaml` disagree with these models.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from mainsail.operator.settings import OperatorSettings, PullPolicy
from mainsail.spec.network import Peer, default_metrics_peers

_DEFAULTS = OperatorSettings()


class _Values(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class Image(_Values):
    """A container image: `repository:tag`, and how the kubelet pulls it."""

    repository: str = Field(min_length=1, pattern=r"^[^\s:@]+(:[0-9]+/[^\s:@]+)?$")
    tag: str = Field(
        "", pattern=r"^([\w][\w.-]{0,127})?$", description="Empty means the chart's appVersion."
    )
    pull_policy: PullPolicy = "IfNotPresent"


def _image(ref: str, pull_policy: PullPolicy, app_version_tag: bool = True) -> Image:
    """Chart default from an operator default `repository:tag`; the tag is left to the chart's
    appVersion when `app_version_tag` (Mainsail's own images are versioned with the chart)."""
    repository, _, tag = ref.rpartition(":")
    return Image(repository=repository, tag="" if app_version_tag else tag, pull_policy=pull_policy)


class Images(_Values):
    """Every image the chart and the operator run. The test bed sets locally built tags with
    `pullPolicy: Never`; Docker users of deploy/kind/up.sh do the same."""

    operator: Image = Image(repository="ghcr.io/mainsail-dev/mainsail-operator")
    router: Image = _image(_DEFAULTS.router_image, _DEFAULTS.router_pull_policy)
    worker: Image = _image(_DEFAULTS.worker_image, _DEFAULTS.worker_pull_policy)
    cache: Image = _image(_DEFAULTS.redis_image, _DEFAULTS.redis_pull_policy, False)


class ServiceAccount(_Values):
    create: bool = True
    name: str = Field("", description="Empty means the release's full name.")
    annotations: dict[str, str] = Field(default_factory=dict)


class Rbac(_Values):
    create: bool = Field(
        True, description="The operator's ClusterRole (or per-namespace Roles) and bindings."
    )


class Defaults(_Values):
    """What the operator stamps into every deployment's children (besides `images`)."""

    ray_version: str = Field(_DEFAULTS.ray_version, min_length=1)
    gpu_type_label: str = Field(_DEFAULTS.gpu_type_label, min_length=1)


class Dashboards(_Values):
    """Grafana dashboards shipped as a ConfigMap, for Grafana's dashboard sidecar."""

    enabled: bool = Field(False, description="Render the dashboards ConfigMap.")
    label: str = Field(
        "grafana_dashboard", min_length=1, description="Label the Grafana sidecar selects on."
    )
    label_value: str = Field("1", description="Value of that label.")


class PodMonitor(_Values):
    """A Prometheus Operator PodMonitor for the routers' and workers' /metrics."""

    enabled: bool = Field(
        False, description="Render it (needs the Prometheus Operator's PodMonitor CRD)."
    )
    interval: str = Field("30s", pattern=r"^[0-9]+(ms|s|m|h)$", description="Scrape interval.")
    labels: dict[str, str] = Field(
        default_factory=dict, description="Extra labels (what your Prometheus selects on)."
    )


class Monitoring(_Values):
    pod_monitor: PodMonitor = PodMonitor()


class NetworkPolicyValues(_Values):
    """Defaults of every ModelDeployment's `spec.network` (NetworkPolicy peers)."""

    clients_from: list[Peer] = Field(
        default_factory=list,
        description="Who may reach routers' client ports (HTTP, gRPC); [] = anyone (clients "
        "still need an API key).",
    )
    metrics_from: list[Peer] = Field(
        default_factory=default_metrics_peers,
        description="Who may scrape workers' metrics port (and routers' /metrics when "
        "clientsFrom is restricted); [] = anyone. Default: Prometheus pods "
        "(app.kubernetes.io/name=prometheus) in each deployment's namespace.",
    )


class ChartValues(_Values):
    """`values.yaml` of charts/mainsail."""

    replica_count: int = Field(
        1, ge=0, le=1, description="0 or 1: the operator runs standalone (no peering)."
    )
    images: Images = Images()
    image_pull_secrets: list[dict[str, str]] = Field(default_factory=list)
    watch_namespaces: list[str] = Field(
        default_factory=list,
        description="Namespaces to watch; empty watches all (ClusterRole and binding), otherwise "
        "each listed namespace gets a Role and RoleBinding and nothing is granted cluster-wide.",
    )
    service_account: ServiceAccount = ServiceAccount()
    rbac: Rbac = Rbac()
    defaults: Defaults = Defaults()
    resync_seconds: float = Field(_DEFAULTS.resync_seconds, gt=0, le=3600)
    autoscale_seconds: float = Field(
        _DEFAULTS.autoscale_seconds,
        gt=0,
        le=3600,
        description="Seconds between autoscaler passes (pools with `autoscaling.enabled`).",
    )
    verbose: bool = False
    dashboards: Dashboards = Dashboards()
    monitoring: Monitoring = Monitoring()
    network_policy: NetworkPolicyValues = NetworkPolicyValues()
    resources: dict[str, Any] = Field(
        default_factory=lambda: {
            "requests": {"cpu": "100m", "memory": "256Mi"},
            "limits": {"memory": "512Mi"},
        }
    )
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    pod_annotations: dict[str, str] = Field(default_factory=dict)


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        if "$ref" in node:
            target = defs[node["$ref"].rsplit("/", 1)[-1]]
            return _inline({**target, **{k: v for k, v in node.items() if k != "$ref"}}, defs)
        return {k: _inline(v, defs) for k, v in node.items() if k not in ("title", "$defs")}
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    return node


def values_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of the chart's values, `$ref`s inlined."""
    raw = ChartValues.model_json_schema(by_alias=True)
    schema: dict[str, Any] = _inline(raw, raw.get("$defs", {}))
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def schema_text() -> str:
    return json.dumps(values_schema(), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mainsail.operator.chart_values")
    parser.add_argument("--write", type=Path, default=None, metavar="values.schema.json")
    args = parser.parse_args(argv)
    if args.write is None:
        sys.stdout.write(schema_text())
    else:
        args.write.write_text(schema_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
