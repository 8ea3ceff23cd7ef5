"""Contracts written once: generated stubs are fresh, the embedded default is the example."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mainsail.cli.defaults import TINY_DEPLOYMENT
from mainsail.cli.up import load_deployment
from mainsail.spec.deployment import ModelDeployment

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


def test_committed_grpc_stubs_match_the_proto(tmp_path: Path) -> None:
    subprocess.run(
        ["bash", str(ROOT / "scripts/gen_proto.sh"), str(tmp_path)],
        check=True,
        env={
            **os.environ,
            "PYTHON": sys.executable,
            "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        },
    )
    generated = tmp_path / "mainsail/proto/v1"
    committed = ROOT / "proto/mainsail/proto/v1"
    for name in (
        "mainsail_pb2.py",
        "mainsail_pb2_grpc.py",
        "mainsail_pb2.pyi",
        "mainsail_pb2_grpc.pyi",
    ):
        assert (generated / name).read_text() == (committed / name).read_text(), (
            f"{name} is stale: run `make proto`"
        )


def test_embedded_default_is_the_documented_example() -> None:
    assert (ROOT / "deploy/examples/tiny.yaml").read_text() == TINY_DEPLOYMENT
    deployment = ModelDeployment.model_validate(yaml.safe_load(TINY_DEPLOYMENT))
    assert deployment.spec.pools.unified is not None


def test_every_example_is_a_valid_model_deployment() -> None:
    examples = sorted((ROOT / "deploy/examples").glob("*.yaml"))
    assert examples
    for path in examples:
        load_deployment(path)


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"engine": {"blockSize": 0}}, "spec.engine.blockSize"),
        ({"engine": {"blockSzie": 16}}, "spec.engine.blockSzie"),
        ({"pools": {"prefill": {"replicas": 1}}}, "spec.pools"),
        (
            {"pools": {"unified": {"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}}},
            "spec.pools.unified.autoscaling",
        ),
        ({"model": {"name": "m"}}, "spec.model"),
    ],
)
def test_bad_deployment_files_name_the_field(
    tmp_path: Path, patch: dict[str, object], field: str
) -> None:
    document = yaml.safe_load(TINY_DEPLOYMENT)
    document["spec"].update(patch)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(ValueError) as info:
        load_deployment(path)
    assert field in str(info.value)
