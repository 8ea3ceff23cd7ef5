"""The deployment's one configuration document, handed to the router and the workers alike.

Why one document: KV-aware routing silently degrades when the router and the engines disagree
on block size, hash seed or hash function (a trap peers fall into). The operator renders the
spec once into `config.json` in the `<deployment>-config` ConfigMap; the router Deployment and
every Ray pod mount that same ConfigMap and also carry its KV fingerprint in
`MAINSAIL_KV_FINGERPRINT`, and a config hash on the pod templates rolls the router when the
document changes. `kvHash` loads with `mainsail.spec.kvhash.KVHashConfig.model_validate`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from mainsail.operator.naming import Owner, child_metadata, child_name
from mainsail.spec.config_document import CONFIG_ENV, spec_for_document
from mainsail.spec.deployment import ModelDeploymentSpec

CONFIG_KEY = "config.json"
CONFIG_MOUNT_DIR = "/etc/mainsail"
CONFIG_PATH = f"{CONFIG_MOUNT_DIR}/{CONFIG_KEY}"
CONFIG_VOLUME = "mainsail-config"


def config_map_name(owner: Owner) -> str:
    return child_name(owner, "config")


def router_fleet_address(owner: Owner, spec: ModelDeploymentSpec) -> str:
    """Where workers register: the router Service's fleet port (in-cluster DNS), never the
    clients' gRPC port."""
    return f"{child_name(owner, 'router')}.{owner.namespace}.svc:{spec.router.fleet_port}"


def router_peers_name(owner: Owner) -> str:
    """The headless Service listing every router pod (workers resolve it to find them)."""
    return child_name(owner, "router-peers")


def router_peers_address(owner: Owner, spec: ModelDeploymentSpec) -> str:
    """The headless Service's name and fleet port: its DNS A records are the router pods,
    each of which a worker registers with (`mainsail.workers.router_discovery`)."""
    return f"{router_peers_name(owner)}.{owner.namespace}.svc:{spec.router.fleet_port}"


def deployment_config(
    owner: Owner, spec: ModelDeploymentSpec, cache_urls: list[str]
) -> dict[str, Any]:
    """Everything the router and workers must agree on, as one JSON-able document
    (read back with `mainsail.spec.config_document.DeploymentDocument`)."""
    kv = spec.engine.kv_hash()

    def dump(model: Any) -> Any:
        return model.model_dump(by_alias=True, mode="json")

    return {
        "deployment": owner.name,
        "namespace": owner.namespace,
        "kvHash": kv.model_dump(mode="json"),
        "kvFingerprint": kv.fingerprint(),
        "model": dump(spec.model),
        "engine": dump(spec.engine),
        "router": dump(spec.router),
        "slo": dump(spec.slo),
        "adapters": [dump(adapter) for adapter in spec.adapters],
        "roles": sorted(spec.pools.worker_pools()),
        "cache": {"urls": cache_urls, "ttlSeconds": spec.pools.cache.ttl_seconds},
        "spec": spec_for_document(spec),
        "routerAddress": router_fleet_address(owner, spec),
        "routerPeers": router_peers_address(owner, spec),
    }


def config_text(config: dict[str, Any]) -> str:
    """Canonical text (sorted keys) so equal configs hash equally."""
    return json.dumps(config, sort_keys=True, indent=2) + "\n"


def config_hash(text: str) -> str:
    """Short digest stamped on pod templates: a changed document rolls the pods."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def config_map(owner: Owner, text: str) -> dict[str, Any]:
    """The ConfigMap holding `config.json`."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": child_metadata(owner, config_map_name(owner), "config"),
        "data": {CONFIG_KEY: text},
    }


def config_volume(owner: Owner) -> dict[str, Any]:
    """Pod volume mounting the ConfigMap (router and Ray pods use the same one)."""
    return {"name": CONFIG_VOLUME, "configMap": {"name": config_map_name(owner)}}


def config_mount() -> dict[str, Any]:
    return {"name": CONFIG_VOLUME, "mountPath": CONFIG_MOUNT_DIR, "readOnly": True}


def common_env(owner: Owner, spec: ModelDeploymentSpec) -> list[dict[str, str]]:
    """Environment every Mainsail container gets (prefix `MAINSAIL_`)."""
    return [
        {"name": "MAINSAIL_DEPLOYMENT", "value": owner.name},
        {"name": CONFIG_ENV, "value": CONFIG_PATH},
        {"name": "MAINSAIL_KV_FINGERPRINT", "value": spec.engine.kv_hash().fingerprint()},
    ]
