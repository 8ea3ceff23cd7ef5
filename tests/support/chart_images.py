"""The four product images of the current sources, for tests that `helm install` the chart on
the test bed's node: where their tars are, and the chart values that name them (pulled `Never`,
they are imported into the node's containerd).

Without a cached image the calling test skips, unless `MAINSAIL_IMAGES_REQUIRED=1` (CI builds
them before pytest), where it fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
IMAGE_NAMES = ("operator", "router", "worker", "redis")


def chart_image(name: str) -> dict[str, Any]:
    """The cached image of the current sources: {ref, tar, key}; skip (or fail) without it."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "deploy/images/build.py"), "--print", name],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    tar = Path(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else None
    if tar is None or not tar.is_file():
        message = f"image {name} of the current sources is not built (deploy/images/build.py)"
        if os.environ.get("MAINSAIL_IMAGES_REQUIRED") == "1":
            pytest.fail(message)
        pytest.skip(message)
    info: dict[str, Any] = json.loads(tar.with_suffix(".json").read_text())
    return info


def helm_image_values(images: dict[str, dict[str, Any]]) -> list[str]:
    """`--set` arguments naming the images for the chart (`images.<component>.*`)."""
    out: list[str] = []
    for name, chart_key in (
        ("operator", "operator"), ("router", "router"), ("worker", "worker"), ("redis", "cache"),
    ):  # fmt: skip
        repository, _, tag = images[name]["ref"].rpartition(":")
        out += [
            "--set", f"images.{chart_key}.repository={repository}",
            "--set", f"images.{chart_key}.tag={tag}",
            "--set", f"images.{chart_key}.pullPolicy=Never",
        ]  # fmt: skip
    return out
