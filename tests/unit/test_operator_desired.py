"""Desired children of a ModelDeployment: pure functions, checked without a cluster."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from mainsail.operator.desired import desired_children
from mainsail.operator.desired_pools import pool_replicas
from mainsail.operator.naming import ANNOTATION_DECLARED_REPLICAS, LABEL_DEPLOYMENT, Owner
from mainsail.operator.quantity import parse_quantity
from mainsail.operator.settings import OperatorSettings
from mainsail.spec.deployment import ModelDeploymentSpec, load_model_deployment
from mainsail.spec.pools import Pool
from mainsail.spec.router_settings import RouterAuth

pytestmark = pytest.mark.unit
EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples"
OWNER = Owner(name="dense-pd", namespace="ns", uid="uid-1", generation=3)
SETTINGS = OperatorSettings()


def _spec(example: str) -> ModelDeploymentSpec:
    return load_model_deployment(yaml.safe_load((EXAMPLES / example).read_text())).spec


def _by_kind(children: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for child in children:
        out.setdefault(child["kind"], []).append(child)
    return out


def test_dense_split_children_names_labels_and_owner() -> None:
    children = desired_children(OWNER, _spec("dense-prefill-decode.yaml"), SETTINGS)
    names = [(c["kind"], c["metadata"]["name"]) for c in children]
    assert names == [
        ("Secret", "dense-pd-worker-credential"),
        ("ConfigMap", "dense-pd-config"),
        ("NetworkPolicy", "dense-pd-workers"),
        ("NetworkPolicy", "dense-pd-router"),
        ("NetworkPolicy", "dense-pd-cache"),
        ("Service", "dense-pd-cache"),
        ("StatefulSet", "dense-pd-cache"),
        ("ServingPool", "dense-pd-prefill"),
        ("ServingPool", "dense-pd-decode"),
        ("RayCluster", "dense-pd"),
        ("Service", "dense-pd-router"),
        ("Service", "dense-pd-router-peers"),
        ("Deployment", "dense-pd-router"),
        ("PodDisruptionBudget", "dense-pd-router"),  # router.replicas: 2 in the example
    ]
    for child in children:
        meta = child["metadata"]
        assert meta["namespace"] == "ns" and meta["labels"][LABEL_DEPLOYMENT] == "dense-pd"
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "mainsail.dev/v1alpha1",
                "kind": "ModelDeployment",
                "name": "dense-pd",
                "uid": "uid-1",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]


def test_ray_cluster_has_one_gpu_worker_group_per_pool() -> None:
    kinds = _by_kind(desired_children(OWNER, _spec("dense-prefill-decode.yaml"), SETTINGS))
    groups = {g["groupName"]: g for g in kinds["RayCluster"][0]["spec"]["workerGroupSpecs"]}
    assert set(groups) == {"prefill", "decode"}
    decode = groups["decode"]
    assert (decode["replicas"], decode["minReplicas"], decode["maxReplicas"]) == (4, 0, 16)
    pod = decode["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert json.loads(json.loads(decode["rayStartParams"]["resources"])) == {"mainsail-decode": 1}


def test_a_sharded_pool_offers_one_ray_cpu_per_rank() -> None:
    spec = _spec("mixtral-moe.yaml")
    assert spec.engine.ranks == 4  # tensorParallel 2, expertParallel up to 4
    kinds = _by_kind(desired_children(OWNER, spec, SETTINGS))
    (group,) = kinds["RayCluster"][0]["spec"]["workerGroupSpecs"]
    assert group["rayStartParams"]["num-cpus"] == "4"
    plain = _by_kind(desired_children(OWNER, _spec("tiny.yaml"), SETTINGS))
    (tiny,) = plain["RayCluster"][0]["spec"]["workerGroupSpecs"]
    assert "num-cpus" not in tiny["rayStartParams"]


def test_one_kv_config_is_handed_to_router_and_workers() -> None:
    spec = _spec("dense-prefill-decode.yaml")
    kinds = _by_kind(desired_children(OWNER, spec, SETTINGS))
    config = json.loads(kinds["ConfigMap"][0]["data"]["config.json"])
    fingerprint = spec.engine.kv_hash().fingerprint()
    assert config["kvFingerprint"] == fingerprint
    assert config["kvHash"] == {
        "block_size": 16,
        "hash_seed": 42,
        "algorithm": spec.engine.kv_hash().algorithm,
    }
    assert len(config["cache"]["urls"]) == 2
    router = kinds["Deployment"][0]["spec"]["template"]
    worker = kinds["RayCluster"][0]["spec"]["workerGroupSpecs"][0]["template"]
    for template in (router, worker):
        env = {e["name"]: e.get("value") for e in template["spec"]["containers"][0]["env"]}
        assert env["MAINSAIL_KV_FINGERPRINT"] == fingerprint
        assert template["spec"]["volumes"][0]["configMap"]["name"] == "dense-pd-config"
    assert (
        router["metadata"]["annotations"]["mainsail.dev/config-hash"]
        == worker["metadata"]["annotations"]["mainsail.dev/config-hash"]
    )


def test_editing_the_routing_profile_changes_the_config_hash() -> None:
    spec = _spec("dense-prefill-decode.yaml")
    edited = spec.model_copy(update={"slo": spec.slo.model_copy(update={"ttft_ms": 123.0})})

    def digest(s: ModelDeploymentSpec) -> str:
        deploy = _by_kind(desired_children(OWNER, s, SETTINGS))["Deployment"][0]
        return str(
            deploy["spec"]["template"]["metadata"]["annotations"]["mainsail.dev/config-hash"]
        )

    assert digest(spec) != digest(edited)


@pytest.mark.parametrize(
    ("example", "has_cache"),
    [
        ("mixtral-moe.yaml", False),
        ("lora-adapters.yaml", False),
        ("dense-prefill-decode.yaml", True),
    ],
)
def test_cache_pool_runs_only_when_not_external_or_disabled(example: str, has_cache: bool) -> None:
    kinds = _by_kind(desired_children(OWNER, _spec(example), SETTINGS))
    assert ("StatefulSet" in kinds) is has_cache
    urls = json.loads(kinds["ConfigMap"][0]["data"]["config.json"])["cache"]["urls"]
    if example == "mixtral-moe.yaml":
        assert urls == ["redis://kv-cache.shared.svc:6379/0"]
    if example == "lora-adapters.yaml":
        assert urls == []


def test_statefulset_memory_cap_and_limit() -> None:
    kinds = _by_kind(desired_children(OWNER, _spec("dense-prefill-decode.yaml"), SETTINGS))
    container = kinds["StatefulSet"][0]["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][:2] == ["--maxmemory", str(8 * 2**30)]
    assert parse_quantity(container["resources"]["limits"]["memory"]) > 8 * 2**30


def _observed(replicas: int, declared: int) -> dict[str, Any]:
    return {
        "metadata": {"annotations": {ANNOTATION_DECLARED_REPLICAS: str(declared)}},
        "spec": {"replicas": replicas},
    }


def test_pool_replicas_keep_a_scaled_value_until_the_deployment_changes() -> None:
    pool = Pool(replicas=2)
    assert pool_replicas(pool, None) == 2
    assert pool_replicas(pool, _observed(5, declared=2)) == 5  # kubectl scale wins
    assert pool_replicas(pool, _observed(5, declared=1)) == 2  # the deployment was edited


def test_pool_replicas_stay_within_autoscaling_bounds() -> None:
    pool = Pool.model_validate(
        {"replicas": 2, "autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 3}}
    )
    assert pool_replicas(pool, _observed(9, declared=2)) == 3
    assert pool_replicas(pool, _observed(0, declared=2)) == 1


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1Gi", 2**30),
        ("500m", 0.5),
        ("1.5G", 1.5e9),
        ("2", 2),
        ("1e3", 1000),
        ("128974848", 128974848),
    ],
)
def test_quantities(text: str, value: float) -> None:
    assert float(parse_quantity(text)) == value


def test_bad_quantity_raises_value_error() -> None:
    with pytest.raises(ValueError, match="not a quantity"):
        parse_quantity("lots")


def test_settings_from_env_refuse_unknown_keys() -> None:
    env = {"MAINSAIL_OPERATOR_RESYNC_SECONDS": "5", "PATH": "/bin"}
    assert OperatorSettings.from_env(env).resync_seconds == 5
    with pytest.raises(ValueError, match="unknown operator setting"):
        OperatorSettings.from_env({"MAINSAIL_OPERATOR_TYPO": "1"})


def test_router_reads_its_credentials_from_the_named_secret() -> None:
    spec = _spec("dense-prefill-decode.yaml")
    deployments = _by_kind(desired_children(OWNER, spec, OperatorSettings()))["Deployment"]
    env = {
        e["name"]: e
        for d in deployments
        for e in d["spec"]["template"]["spec"]["containers"][0].get("env", [])
    }
    # No secret named: auth is still on, with the key the operator issued.
    issued = env["MAINSAIL_ROUTER_API_KEYS"]["valueFrom"]["secretKeyRef"]
    assert issued == {"name": "dense-pd-worker-credential", "key": "apiKeys", "optional": False}
    auth = RouterAuth(secret_name="llm-keys")
    locked = spec.model_copy(update={"router": spec.router.model_copy(update={"auth": auth})})
    (router,) = [
        d
        for d in _by_kind(desired_children(OWNER, locked, OperatorSettings()))["Deployment"]
        if d["metadata"]["name"].endswith("-router")
    ]
    env_list = router["spec"]["template"]["spec"]["containers"][0]["env"]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in env_list if "valueFrom" in e}
    want = {"name": "llm-keys", "key": "apiKeys", "optional": True}
    assert refs["MAINSAIL_ROUTER_API_KEYS"] == want
    assert refs["MAINSAIL_ROUTER_ADMIN_TOKEN"]["key"] == "adminToken"
    with pytest.raises(ValueError, match=r"secret_name|secretName"):
        ModelDeploymentSpec.model_validate(
            {**spec.model_dump(by_alias=True), "router": {"auth": {"secretName": "Bad_Name"}}}
        )


def test_the_ray_head_runs_the_worker_supervisor() -> None:
    """KubeRay keeps a head command that does not say `ray start` and runs its own
    `ray start --head` after it; ours backgrounds the supervisor (restarted if it exits)."""
    import importlib

    from mainsail.operator.desired_pools import SUPERVISOR_LOOP, SUPERVISOR_MODULE

    ray = _by_kind(desired_children(OWNER, _spec("dense-prefill-decode.yaml"), SETTINGS))
    head = ray["RayCluster"][0]["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["args"] == [SUPERVISOR_LOOP] and "ray start" not in SUPERVISOR_LOOP
    assert SUPERVISOR_LOOP.startswith("{ while true; do python3 -m ")
    assert SUPERVISOR_LOOP.endswith("& }")
    assert {"name": "MAINSAIL_CONFIG", "value": "/etc/mainsail/config.json"} in head["env"]
    assert callable(importlib.import_module(SUPERVISOR_MODULE).main)


def test_a_generated_model_reaches_the_router_through_an_init_container() -> None:
    """The router image has no torch; the worker image generates the same checkpoint the
    workers generate, into a volume the router reads (`MAINSAIL_MODEL_DIR`)."""
    spec = _spec("dense-prefill-decode.yaml")
    router = next(c for c in desired_children(OWNER, spec, SETTINGS) if c["kind"] == "Deployment")[
        "spec"
    ]["template"]["spec"]
    (init,) = router["initContainers"]
    assert init["image"] == SETTINGS.worker_image
    assert init["args"] == [
        "mainsail", "model", "init", "--arch", "llama", "--seed", "7", "--size", "tiny",
        "--out", "/var/lib/mainsail/model",
    ]  # fmt: skip
    env = router["containers"][0]["env"]
    assert {"name": "MAINSAIL_MODEL_DIR", "value": "/var/lib/mainsail/model"} in env
    on_disk = spec.model_copy(
        update={"model": spec.model.model_copy(update={"generate": None, "path": "/models/x"})}
    )
    router = next(
        c for c in desired_children(OWNER, on_disk, SETTINGS) if c["kind"] == "Deployment"
    )["spec"]["template"]["spec"]
    assert "initContainers" not in router
    assert all(e["name"] != "MAINSAIL_MODEL_DIR" for e in router["containers"][0]["env"])


def test_the_ray_head_is_probed_on_its_gcs_port_not_the_disabled_dashboard() -> None:
    ray = _by_kind(desired_children(OWNER, _spec("tiny.yaml"), SETTINGS))["RayCluster"][0]
    head_group = ray["spec"]["headGroupSpec"]
    assert head_group["rayStartParams"]["include-dashboard"] == "false"
    head = head_group["template"]["spec"]["containers"][0]
    for probe in ("readinessProbe", "livenessProbe"):
        assert head[probe]["tcpSocket"] == {"port": 6379}


def test_router_replicas_get_peers_service_spread_and_a_budget_only_when_several() -> None:
    spec = _spec("dense-prefill-decode.yaml")
    assert spec.router.replicas == 2
    kinds = _by_kind(desired_children(OWNER, spec, SETTINGS))
    peers = next(s for s in kinds["Service"] if s["metadata"]["name"] == "dense-pd-router-peers")
    assert peers["spec"]["clusterIP"] == "None" and peers["spec"]["publishNotReadyAddresses"]
    assert peers["spec"]["ports"] == [
        {"name": "fleet", "port": spec.router.fleet_port, "targetPort": "fleet"},
        {"name": "http", "port": spec.router.http_port, "targetPort": "http"},
    ]
    router = kinds["Deployment"][0]
    assert router["spec"]["replicas"] == 2
    assert peers["spec"]["selector"] == router["spec"]["selector"]["matchLabels"]
    spread = router["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert [c["topologyKey"] for c in spread] == [
        "kubernetes.io/hostname",
        "topology.kubernetes.io/zone",
    ]
    assert {c["whenUnsatisfiable"] for c in spread} == {"ScheduleAnyway"}
    (budget,) = kinds["PodDisruptionBudget"]
    assert budget["spec"] == {
        "maxUnavailable": 1,
        "selector": {"matchLabels": router["spec"]["selector"]["matchLabels"]},
    }
    config = json.loads(kinds["ConfigMap"][0]["data"]["config.json"])
    assert config["routerPeers"] == f"dense-pd-router-peers.ns.svc:{spec.router.fleet_port}"
    one = spec.model_copy(update={"router": spec.router.model_copy(update={"replicas": 1})})
    assert "PodDisruptionBudget" not in _by_kind(desired_children(OWNER, one, SETTINGS))


def test_model_volume_is_mounted_read_only_at_the_path_on_router_and_workers() -> None:
    """`spec.model.volume` (a PVC here) is mounted at `spec.model.path` on the router pod and
    on every worker pod; the Ray head (no engine) does not get it; a hostPath source must be
    a directory."""
    from mainsail.operator.desired_model import model_volumes

    doc = {
        "model": {
            "name": "m", "path": "/models/m",
            "volume": {"claimName": "weights", "subPath": "llama/m"},
        },
        "pools": {"prefill": {}, "decode": {}},
    }  # fmt: skip
    spec = ModelDeploymentSpec.model_validate(doc)
    children = _by_kind(desired_children(OWNER, spec, SETTINGS))
    router = children["Deployment"][0]["spec"]["template"]["spec"]
    ray = children["RayCluster"][0]["spec"]
    pods = [router] + [g["template"]["spec"] for g in ray["workerGroupSpecs"]]
    for pod in pods:
        assert {"name": "model-files", "persistentVolumeClaim": {"claimName": "weights",
                "readOnly": True}} in pod["volumes"]  # fmt: skip
        mounts = [m for c in pod["containers"] for m in c["volumeMounts"]]
        assert {"name": "model-files", "mountPath": "/models/m", "readOnly": True,
                "subPath": "llama/m"} in mounts  # fmt: skip
    head = ray["headGroupSpec"]["template"]["spec"]
    assert all(v["name"] != "model-files" for v in head["volumes"])
    host = ModelDeploymentSpec.model_validate(
        {"model": {"name": "m", "path": "/m", "volume": {"hostPath": "/srv/m"}}}
    )
    assert model_volumes(host) == [
        {"name": "model-files", "hostPath": {"path": "/srv/m", "type": "Directory"}}
    ]
