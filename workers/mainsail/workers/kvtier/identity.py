"""The namespace of a model's blocks in the shared tier: KV hashing parameters + model identity.

Why: block hashes name token prefixes, not the KV computed from them. Two deployments that
share a Redis with the same block size and seed, but serve different weights (two fine-tunes
of one base model have identical shapes), must never read each other's blocks, and a
mismatch must not depend on shapes to be caught. So keys and block headers carry
`kv_namespace`: the KV hash fingerprint, a digest of the checkpoint, and the KV dtype.

The checkpoint digest covers the whole checkpoint: `config.json`, and every byte of every
weight file (a sample would let two checkpoints that differ outside it — a fine-tune of a few
layers — share blocks). Reading the weights costs about a second per GB once per worker
start, off the event loop; digests are remembered per (file, size, mtime) in the process.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import torch

from mainsail.spec.kvhash import KVHashConfig

_READ_BYTES = 8 << 20
_WEIGHT_SUFFIXES = (".safetensors", ".bin")


def checkpoint_digest(model_dir: Path) -> str:
    """16 hex digits identifying the checkpoint in ``model_dir`` (config and weights)."""
    model_dir = Path(model_dir)
    h = hashlib.blake2b(digest_size=8)
    config = model_dir / "config.json"
    if config.is_file():
        h.update(config.read_bytes())
    for path in sorted(p for p in model_dir.iterdir() if p.name.endswith(_WEIGHT_SUFFIXES)):
        stat = path.stat()
        digest = _file_digest(str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        h.update(f"{path.name}:{stat.st_size}:{digest}".encode())
    return h.hexdigest()


@functools.lru_cache(maxsize=256)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    """BLAKE2b of a whole file (``size`` and ``mtime_ns`` key the cache)."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(_READ_BYTES):
            h.update(chunk)
    return h.hexdigest()


def kv_namespace(kv_hash: KVHashConfig, model_dir: Path, dtype: torch.dtype) -> str:
    """Key namespace and block-header fingerprint for this model's KV blocks."""
    kind = str(dtype).removeprefix("torch.")
    return f"{kv_hash.fingerprint()}/{checkpoint_digest(model_dir)}/{kind}"
