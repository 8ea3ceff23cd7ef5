"""The deployment's configuration document (`config.json`), as the operator writes it and the
router and the Ray head's worker supervisor read it.

Why a model here: three components meet at this file (the operator renders it into the
`<deployment>-config` ConfigMap; `mainsail router --config` and
`python -m mainsail.workers.supervisor` read it from `MAINSAIL_CONFIG`), so its keys are
written down once. The document carries the whole `ModelDeploymentSpec` (pool sizes left out:
they belong to the ServingPools, and a resize must not roll the router), so the router on a
cluster is configured exactly as `mainsail up` configures it: prefill/decode roles, SLO
classes, adapters and routing profile all survive. The older flat keys (`kvHash`, `engine`,
`router`, ...) stay for readers that only need those.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mainsail.spec.deployment import ModelDeployment, ModelDeploymentSpec

CONFIG_ENV = "MAINSAIL_CONFIG"
"""Path of the mounted document in every Mainsail container the operator creates."""
MODEL_DIR_ENV = "MAINSAIL_MODEL_DIR"
"""Set in the router's container when an init container already put the checkpoint there (a
generated one: the router image carries no torch to generate it)."""
SIZE_KEYS = ("replicas", "autoscaling")
"""Per-pool keys left out of the document's spec (the ServingPools own pool sizes)."""


class DeploymentDocument(BaseModel):
    """The parts of `config.json` that the router and the supervisor read."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    deployment: str = Field(..., min_length=1, description="The ModelDeployment's name.")
    namespace: str = Field("default", min_length=1)
    kv_fingerprint: str = Field(..., alias="kvFingerprint", min_length=1)
    spec: ModelDeploymentSpec
    router_address: str = Field(
        ...,
        alias="routerAddress",
        min_length=3,
        description="host:port of the router's gRPC (its Service), where workers register.",
    )
    router_peers: str | None = Field(
        None,
        alias="routerPeers",
        min_length=3,
        description="host:port of the headless Service whose DNS records are every router "
        "pod: workers register with each (active-active replicas). Unset: `routerAddress` only.",
    )
    cache_urls: tuple[str, ...] = Field(
        (), description="The cache pool's Redis URLs (empty: no shared KV tier)."
    )

    @model_validator(mode="before")
    @classmethod
    def _cache_urls(cls, value: Any) -> Any:
        if isinstance(value, dict) and "cache_urls" not in value:
            urls = (value.get("cache") or {}).get("urls") or []
            value = {**value, "cache_urls": tuple(urls)}
        return value

    @model_validator(mode="after")
    def _fingerprint(self) -> DeploymentDocument:
        actual = self.spec.engine.kv_hash().fingerprint()
        if actual != self.kv_fingerprint:
            raise ValueError(
                f"config: kvFingerprint {self.kv_fingerprint} disagrees with the engine "
                f"settings ({actual})"
            )
        return self

    def model_deployment(self) -> ModelDeployment:
        """The resource as `mainsail up -f` would have read it (pool sizes at defaults)."""
        return ModelDeployment.model_validate(
            {
                "metadata": {"name": self.deployment, "namespace": self.namespace},
                "spec": self.spec.model_dump(by_alias=True, mode="json"),
            }
        )


def spec_for_document(spec: ModelDeploymentSpec) -> dict[str, Any]:
    """``spec`` as JSON with the pool sizes removed (see `SIZE_KEYS`), and the network
    settings (NetworkPolicies only: neither the router nor the workers read them, so editing
    them must not roll their pods)."""
    out: dict[str, Any] = spec.model_dump(by_alias=True, mode="json", exclude={"network"})
    for role in spec.pools.worker_pools():
        for key in SIZE_KEYS:
            out["pools"][role].pop(key, None)
    return out
