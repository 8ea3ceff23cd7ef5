"""The supervisor's pure planner: start what is missing, replace what died, stop surplus,
back off after failed starts. The Ray-driving loop is tested with real Ray and a real SIGKILL
in tests/integration/test_worker_supervisor.py."""

from __future__ import annotations

import pytest

from mainsail.spec.config_document import DeploymentDocument
from mainsail.workers.ray_actor import NODE_ID_PLACEHOLDER, for_node
from mainsail.workers.supervisor_plan import (
    MAX_BACKOFF_S,
    Backoff,
    Member,
    member_name,
    parse_member_name,
    plan,
)
from mainsail.workers.worker_spec import WorkerSpec

pytestmark = pytest.mark.unit


def test_starts_every_missing_replica_at_the_lowest_free_indexes() -> None:
    d = plan({"prefill": 2, "decode": 3}, [Member("decode", 1, alive=True)])
    assert d.start == (("decode", 0), ("decode", 2), ("prefill", 0), ("prefill", 1))
    assert d.stop == () and d.forget == ()


def test_a_dead_member_is_forgotten_and_restarted_under_its_own_index() -> None:
    members = [Member("unified", 0, alive=True), Member("unified", 1, alive=False)]
    d = plan({"unified": 2}, members)
    assert d.forget == (("unified", 1),)
    assert d.start == (("unified", 1),)


def test_surplus_stops_pending_members_first_then_the_highest_index() -> None:
    members = [
        Member("unified", 0, alive=True),
        Member("unified", 1, alive=True, ready=False),
        Member("unified", 2, alive=True),
        Member("unified", 3, alive=True),
    ]
    assert plan({"unified": 2}, members).stop == (("unified", 1), ("unified", 3))
    assert plan({}, members[:1]).stop == (("unified", 0),)  # a role no longer wanted


def test_nothing_to_do_when_observed_equals_desired() -> None:
    members = [Member("decode", i, alive=True) for i in range(3)]
    assert plan({"decode": 3}, members).empty


def test_a_failed_start_backs_off_doubling_up_to_the_cap() -> None:
    backoff = Backoff().failed("unified", 0, now=100.0)
    assert plan({"unified": 1}, [], now=100.5, backoff=backoff).start == ()
    assert plan({"unified": 1}, [], now=101.0, backoff=backoff).start == (("unified", 0),)
    for _ in range(10):
        backoff = backoff.failed("unified", 0, now=0.0)
    assert backoff.delay[("unified", 0)] == MAX_BACKOFF_S
    # A backed-off index is not replaced by another one: the identity stays stable.
    assert plan({"unified": 2}, [], now=0.0, backoff=backoff).start == (("unified", 1),)
    assert backoff.succeeded("unified", 0) == Backoff()


def test_starts_per_pass_are_capped() -> None:
    assert len(plan({"unified": 100}, [], max_starts=8).start) == 8
    with pytest.raises(ValueError, match="max_starts"):
        plan({}, [], max_starts=0)


def test_member_names_round_trip_and_foreign_names_are_ignored() -> None:
    name = member_name("dense-pd", "prefill", 12)
    assert name == "dense-pd-prefill-12"
    assert parse_member_name("dense-pd", name) == ("prefill", 12)
    assert parse_member_name("dense-pd", "other-prefill-1") is None
    assert parse_member_name("dense-pd", "dense-pd-prefill-x") is None


def test_a_cluster_worker_takes_its_pod_name_and_ip(tmp_path: object) -> None:
    spec = WorkerSpec(
        worker_id=NODE_ID_PLACEHOLDER,
        model_name="m",
        model_dir="/nonexistent",
        host="0.0.0.0",
        adapters=({"name": "here", "generateRank": 4}, {"name": "gone", "path": "/nonexistent"}),
    )
    filled = for_node(
        spec, environ={"RAY_CLOUD_INSTANCE_ID": "tiny-unified-abcde"}, node_ip=lambda: "10.1.2.3"
    )
    assert filled.worker_id == "tiny-unified-abcde"
    assert filled.advertise_host == "10.1.2.3"
    assert filled.adapter_names == ("here",)
    local = WorkerSpec(worker_id="tiny-unified-0", model_name="m", model_dir="/x")
    assert for_node(local, environ={}, node_ip=lambda: "10.1.2.3") == local
    assert for_node(spec, environ={}, hostname=lambda: "pod-7", node_ip=lambda: "i").worker_id == (
        "pod-7"
    )


def test_cluster_workers_are_built_from_the_config_document() -> None:
    from pathlib import Path

    import yaml

    from mainsail.operator.desired_config import deployment_config
    from mainsail.operator.naming import Owner
    from mainsail.spec.deployment import ModelDeployment
    from mainsail.workers.cluster_supervisor import placements, spec_factory

    root = Path(__file__).resolve().parents[2]
    md = ModelDeployment.model_validate(
        yaml.safe_load((root / "deploy/examples/dense-prefill-decode.yaml").read_text())
    )
    owner = Owner("dense-pd", "prod", "u")
    doc = DeploymentDocument.model_validate(
        deployment_config(owner, md.spec, ["redis://dense-pd-cache-0:6379/0", "redis://x:1/0"])
    )
    spec = spec_factory(doc)("decode", 3)
    assert spec.role == "decode" and spec.worker_id == NODE_ID_PLACEHOLDER
    assert spec.router_address == "dense-pd-router.prod.svc:50052"
    # Every router pod, through the headless Service's DNS records (active-active replicas).
    assert spec.router_dns == "dense-pd-router-peers.prod.svc:50052"
    assert type(spec.router_discovery()).__name__ == "DnsDiscovery"
    # Every cache-pool replica: the worker's tier shards blocks over them (kvtier/sharded.py).
    assert spec.redis_url == "redis://dense-pd-cache-0:6379/0,redis://x:1/0"
    assert spec.generate is not None and spec.generate.seed == 7
    assert spec.engine == md.spec.engine and spec.host == "0.0.0.0"
    assert placements(doc)["prefill"].num_gpus == 1
