"""`spec.model`: where the checkpoint comes from and, on a cluster, the volume that holds it.

Kept apart from the engine knobs because it is read where no engine runs (the operator mounts
the volume; `mainsail up` resolves the path).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, model_validator

from mainsail.spec.spec_model import SpecModel

_DOTDOT = re.compile(r"(^|/)\.\.(/|$)")


class ModelVolume(SpecModel):
    """What a cluster mounts at `model.path` (read-only, on the router and every worker pod):
    a PersistentVolumeClaim (the usual home of model weights on a cluster, as KServe's and
    llm-d's `pvc://` sources) or a directory of the node (`hostPath`: single-node and test
    clusters, or weights pre-staged on every node). `mainsail up` ignores it: locally the path
    is read as it is, so one YAML serves on a laptop and on a cluster."""

    claim_name: str | None = Field(
        None,
        min_length=1,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="Name of a PersistentVolumeClaim in the deployment's namespace (it must "
        "allow several readers, e.g. ReadOnlyMany, to serve more than one pod on many nodes).",
    )
    host_path: str | None = Field(
        None,
        min_length=1,
        max_length=4096,
        pattern=r"^/",
        description="Absolute directory on the node (no `..`).",
    )
    sub_path: str | None = Field(
        None,
        min_length=1,
        max_length=4096,
        pattern=r"^[^/]",
        description="Directory inside the volume holding the checkpoint (relative, no `..`).",
    )

    @model_validator(mode="after")
    def _one_source(self) -> ModelVolume:
        if (self.claim_name is None) == (self.host_path is None):
            raise ValueError("model.volume: set exactly one of `claimName` or `hostPath`")
        for name, value in (("hostPath", self.host_path), ("subPath", self.sub_path)):
            if value is not None and _DOTDOT.search(value):
                raise ValueError(f"model.volume.{name}: must not contain `..`")
        return self


class ModelSource(SpecModel):
    """Where the checkpoint comes from (Hugging Face layout: config, safetensors, tokenizer)."""

    name: str = Field(
        ...,
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._/:-]*$",
        description="Served model name: the `model` field clients send.",
    )
    path: str | None = Field(
        None,
        min_length=1,
        max_length=4096,
        description="Directory holding the checkpoint. On a cluster, `volume` is mounted here "
        "(without one, the images must contain it).",
    )
    volume: ModelVolume | None = Field(
        None,
        description="On a cluster: the volume mounted read-only at `path` on the router and "
        "worker pods. Needs an absolute `path`.",
    )
    generate: Literal["llama", "mixtral"] | None = Field(
        None,
        description="Generate a tiny deterministic checkpoint of this architecture instead of "
        "reading one (for local runs and tests; no model hub needed).",
    )
    seed: int = Field(0, ge=0, description="Weight seed when `generate` is set.")
    size: Literal["tiny", "small"] = Field(
        "tiny",
        description="Size of the generated checkpoint when `generate` is set: `tiny` (hidden "
        "64, 2 layers; forward passes nearly free, for tests) or `small` (hidden 256, 4 layers; "
        "prefill costs real CPU time, for benchmarks).",
    )

    @model_validator(mode="after")
    def _one_source(self) -> ModelSource:
        if (self.path is None) == (self.generate is None):
            raise ValueError("model: set exactly one of `path` or `generate`")
        if self.volume is not None and not (self.path or "").startswith("/"):
            raise ValueError("model.volume: needs an absolute `path` (where it is mounted)")
        return self
