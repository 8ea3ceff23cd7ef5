"""Writes small deterministic checkpoints in Hugging Face layout, and caches them.

Why: tests, benches and `mainsail up` need a real model (loadable by `transformers` as well as
by our engine) without a model hub or network. The output directory holds `config.json`,
`model.safetensors` (or shards plus `model.safetensors.index.json`), `tokenizer.json`,
`tokenizer_config.json` (with a chat template) and `generation_config.json`, plus a marker file
recording the arch, size, seed and a SHA-256 of every file. Generating again with the same arch and
seed into a complete directory does nothing; every file is written under a temporary name and
renamed, and the marker is written last, so concurrent generators cannot leave a torn checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from mainsail.workers.checkpoint.tokenizer_builder import build_tokenizer, tokenizer_config
from mainsail.workers.checkpoint.weights import (
    BOS_ID,
    EOS_ID,
    MAX_POSITIONS,
    PAD_ID,
    VOCAB_SIZE,
    dims,
    model_config,
    model_weights,
)
from mainsail.workers.checkpoint_location import Arch, Size, checkpoint_dir

MARKER = ".mainsail-checkpoint.json"
GENERATOR_VERSION = 1


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _write_json(path: Path, obj: Any) -> None:
    _write_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def _is_complete(out_dir: Path, arch: str, size: str, seed: int, shards: int) -> bool:
    marker = out_dir / MARKER
    if not marker.is_file():
        return False
    try:
        meta = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    # Markers written before sizes existed have no "size": they are tiny checkpoints.
    found = (meta.get("arch"), meta.get("size", "tiny"), meta.get("seed"))
    if (*found, meta.get("version"), meta.get("shards")) != (
        arch,
        size,
        seed,
        GENERATOR_VERSION,
        shards,
    ):
        return False
    files: dict[str, str] = meta.get("files", {})
    return bool(files) and all(
        (out_dir / name).is_file() and _sha256(out_dir / name) == digest
        for name, digest in files.items()
    )


def _save_weights(out_dir: Path, tensors: dict[str, torch.Tensor], shards: int) -> list[str]:
    """Write one file, or ``shards`` files plus an index, like `save_pretrained` does."""
    if shards == 1:
        tmp = out_dir / f".model.safetensors.tmp-{os.getpid()}"
        save_file(tensors, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, out_dir / "model.safetensors")
        return ["model.safetensors"]
    names = list(tensors)
    per = -(-len(names) // shards)
    weight_map: dict[str, str] = {}
    written: list[str] = []
    for i in range(shards):
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[i * per : (i + 1) * per]}
        tmp = out_dir / f".{fname}.tmp-{os.getpid()}"
        save_file(part, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, out_dir / fname)
        weight_map.update(dict.fromkeys(part, fname))
        written.append(fname)
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    _write_json(out_dir / "model.safetensors.index.json", index)
    return [*written, "model.safetensors.index.json"]


def generate_checkpoint(
    arch: Arch, out_dir: Path, seed: int = 0, shards: int = 1, size: Size = "tiny"
) -> Path:
    """Write the ``size`` ``arch`` model with weights from ``seed`` into ``out_dir``; return it.

    ``shards`` > 1 splits the weights over that many safetensors files with an index (to
    exercise sharded loading). Skips all work when ``out_dir`` already holds the same
    checkpoint, verified by the marker's content hashes.
    """
    if arch not in ("llama", "mixtral"):
        raise ValueError(f"unknown architecture {arch!r}; expected 'llama' or 'mixtral'")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    dims(size)  # validates
    out_dir = Path(out_dir)
    if _is_complete(out_dir, arch, size, seed, shards):
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MARKER).unlink(missing_ok=True)
    files = _save_weights(out_dir, model_weights(arch, seed, size), shards)
    _write_json(out_dir / "config.json", model_config(arch, size))
    _write_atomic(out_dir / "tokenizer.json", build_tokenizer(VOCAB_SIZE).to_str().encode())
    _write_json(out_dir / "tokenizer_config.json", tokenizer_config(MAX_POSITIONS))
    generation = {"bos_token_id": BOS_ID, "eos_token_id": EOS_ID, "pad_token_id": PAD_ID}
    _write_json(out_dir / "generation_config.json", generation)
    files += ["config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"]
    marker = {
        "arch": arch,
        "size": size,
        "seed": seed,
        "version": GENERATOR_VERSION,
        "shards": shards,
        "files": {name: _sha256(out_dir / name) for name in files},
    }
    _write_json(out_dir / MARKER, marker)
    return out_dir


def ensure_checkpoint(
    arch: Arch, cache_dir: Path | None = None, seed: int = 0, size: Size = "tiny"
) -> Path:
    """The cached checkpoint, generated on first use: ``<cache_dir>/<arch>-s<seed>/`` for
    ``tiny`` (the name predates sizes, so existing caches stay valid) and
    ``<cache_dir>/<arch>-<size>-s<seed>/`` for other sizes.

    ``cache_dir`` defaults to ``~/.cache/mainsail/models``.
    """
    return generate_checkpoint(
        arch, checkpoint_dir(arch, cache_dir, seed, size), seed=seed, size=size
    )
