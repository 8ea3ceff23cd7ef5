"""The model's volume on a cluster: `spec.model.volume` mounted read-only at `spec.model.path`.

Why a module: the router pods (tokenizer, chat template) and the worker pods (weights) need the
same checkpoint at the same path, the one `mainsail up` reads locally, so the YAML is the same
on a laptop and on a cluster. Without a volume nothing is mounted (the checkpoint is in the
image, or generated: see `desired_router._model_init`).
"""

from __future__ import annotations

from typing import Any

from mainsail.spec.deployment import ModelDeploymentSpec

MODEL_FILES_VOLUME = "model-files"


def model_volumes(spec: ModelDeploymentSpec) -> list[dict[str, Any]]:
    """The pod volume for `spec.model.volume` (none without one)."""
    volume = spec.model.volume
    if volume is None:
        return []
    if volume.claim_name is not None:
        source: dict[str, Any] = {
            "persistentVolumeClaim": {"claimName": volume.claim_name, "readOnly": True}
        }
    else:
        source = {"hostPath": {"path": volume.host_path, "type": "Directory"}}
    return [{"name": MODEL_FILES_VOLUME, **source}]


def model_mounts(spec: ModelDeploymentSpec) -> list[dict[str, Any]]:
    """The container mount at `spec.model.path` (read-only; `subPath` inside the volume)."""
    volume = spec.model.volume
    if volume is None or spec.model.path is None:
        return []
    mount: dict[str, Any] = {
        "name": MODEL_FILES_VOLUME,
        "mountPath": spec.model.path,
        "readOnly": True,
    }
    if volume.sub_path is not None:
        mount["subPath"] = volume.sub_path
    return [mount]
