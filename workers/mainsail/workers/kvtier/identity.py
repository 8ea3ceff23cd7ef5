"""The namespace of a model's blocks in the shared tier: KV hashing parameters + model identity.

Why: block hashes name token prefixes, not the KV computed from them. Two deployments that
share a Redis with the same block size and seed, but serve different weights (two fine-tunes
of one base model have identical shapes), must never read each other's blocks, and a
mismatch must not depend on shapes to be caught. So keys and block headers carry
`kv_namespace`: the KV hash fingerprint, a digest of the checkpoint, and the KV dtype.

The checkpoint digest is cheap at any model size: `config.json`, and for every weight file
its name, size and 64 KiB read from its middle (fine-tunes differ in every tensor).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from mainsail.spec.kvhash import KVHashConfig

_SAMPLE_BYTES = 64 << 10
_WEIGHT_SUFFIXES = (".safetensors", ".bin")


def checkpoint_digest(model_dir: Path) -> str:
    """16 hex digits identifying the checkpoint in ``model_dir`` (config and weights)."""
    model_dir = Path(model_dir)
    h = hashlib.blake2b(digest_size=8)
    config = model_dir / "config.json"
    if config.is_file():
        h.update(config.read_bytes())
    for path in sorted(p for p in model_dir.iterdir() if p.name.endswith(_WEIGHT_SUFFIXES)):
        size = path.stat().st_size
        h.update(f"{path.name}:{size}".encode())
        with path.open("rb") as f:
            f.seek(max(0, size // 2 - _SAMPLE_BYTES // 2))
            h.update(f.read(_SAMPLE_BYTES))
    return h.hexdigest()


def kv_namespace(kv_hash: KVHashConfig, model_dir: Path, dtype: torch.dtype) -> str:
    """Key namespace and block-header fingerprint for this model's KV blocks."""
    kind = str(dtype).removeprefix("torch.")
    return f"{kv_hash.fingerprint()}/{checkpoint_digest(model_dir)}/{kind}"
