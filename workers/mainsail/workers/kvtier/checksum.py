"""The checksum every KV block value carries, checked before the block reaches the engine.

Why: a block fetched from the shared tier goes straight into the KV cache that attention
reads; a value damaged in Redis, on the wire or by a buggy writer would silently corrupt
generation for every request that reuses that prefix. So each value ends with a BLAKE2b-64
of its data, written by the codec and verified by every read path (the zero-copy bulk read,
the batched read and the portable decode); a mismatch makes the block a miss, counted in the
tier's `corrupt_blocks`.
"""

from __future__ import annotations

import hashlib

import numpy as np

CHECKSUM_BYTES = 8
_KEY = b"mainsail-kv-block-v1"


def block_checksum(data: bytes | bytearray | memoryview | np.ndarray) -> bytes:
    """The 8-byte checksum of one block's data."""
    raw = np.ascontiguousarray(data).data if isinstance(data, np.ndarray) else data
    return hashlib.blake2b(raw, digest_size=CHECKSUM_BYTES, key=_KEY).digest()


def checksum_rows(rows: np.ndarray) -> np.ndarray:
    """Checksums of each row of a uint8 array, as an ``(n, 8)`` uint8 array."""
    out = np.empty((rows.shape[0], CHECKSUM_BYTES), dtype=np.uint8)
    for i in range(rows.shape[0]):
        out[i] = np.frombuffer(block_checksum(rows[i]), dtype=np.uint8)
    return out


def first_corrupt(rows: np.ndarray, trailers: np.ndarray) -> int:
    """Index of the first row whose checksum differs from its trailer (len(rows) if none)."""
    for i in range(rows.shape[0]):
        if block_checksum(rows[i]) != trailers[i].tobytes():
            return i
    return int(rows.shape[0])
