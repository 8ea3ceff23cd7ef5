"""Reads safetensors weights (one file, or shards listed by an index) into a model.

Why strict: a checkpoint that lacks a tensor, has one of the wrong shape, or carries tensors
the architecture does not know would otherwise produce garbage silently (or be filled with
random values). Every such case raises `CheckpointError` naming the tensor and the file.
The model is built on the ``meta`` device and the loaded tensors are assigned to it, so no
memory is spent on throw-away initial weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from mainsail.workers.models.errors import CheckpointError

_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def weight_files(model_dir: Path) -> dict[str, list[str] | None]:
    """Safetensors files of ``model_dir`` mapped to the tensor names the index promises."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as exc:
            raise CheckpointError(f"{index}: not a valid safetensors index ({exc})") from exc
        files: dict[str, list[str] | None] = {}
        for name, fname in weight_map.items():
            listed = files.setdefault(fname, [])
            if listed is not None:
                listed.append(name)
        for fname in files:
            if not (model_dir / fname).is_file():
                raise CheckpointError(f"{index} lists shard {fname!r}, which is missing")
        return files
    single = sorted(p.name for p in model_dir.glob("*.safetensors"))
    if not single:
        raise CheckpointError(f"no *.safetensors weights in {model_dir}")
    return dict.fromkeys(single)


def read_tensors(
    model_dir: Path, dtype: torch.dtype, device: torch.device
) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint, converted to ``dtype`` on ``device``."""
    out: dict[str, torch.Tensor] = {}
    for fname, promised in weight_files(model_dir).items():
        path = model_dir / fname
        try:
            with safe_open(str(path), framework="pt", device=str(device)) as f:
                names = list(f.keys())
                for name in promised or []:
                    if name not in names:
                        raise CheckpointError(
                            f"tensor {name!r} is listed in the index but not in {path}"
                        )
                for name in names:
                    if name.endswith(_IGNORED_SUFFIXES):
                        continue
                    out[name] = f.get_tensor(name).to(dtype)
        except CheckpointError:
            raise
        except Exception as exc:
            raise CheckpointError(f"cannot read {path}: {exc}") from exc
    return out


def load_weights(
    model: nn.Module, model_dir: Path, dtype: torch.dtype, device: torch.device
) -> None:
    """Assign the checkpoint's tensors to ``model`` (built on ``meta``); check names, shapes."""
    tensors = read_tensors(model_dir, dtype, device)
    tied: dict[str, str] = getattr(model, "tied_weights", dict)()
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if k not in tied}
    for name in tied:
        tensors.pop(name, None)
    arch = type(model).__name__
    for name, shape in expected.items():
        if name not in tensors:
            raise CheckpointError(f"checkpoint {model_dir} is missing tensor {name!r} ({arch})")
        got = tuple(tensors[name].shape)
        if got != shape:
            raise CheckpointError(
                f"tensor {name!r} in {model_dir} has shape {list(got)}, "
                f"{arch} expects {list(shape)}"
            )
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        raise CheckpointError(
            f"checkpoint {model_dir} has tensor {unexpected[0]!r} unknown to {arch}"
            + (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else "")
        )
    model.load_state_dict(tensors, strict=False, assign=True)
    for name, source in tied.items():
        owner, _, attr = name.rpartition(".")
        src_owner, _, src_attr = source.rpartition(".")
        setattr(model.get_submodule(owner), attr, getattr(model.get_submodule(src_owner), src_attr))
