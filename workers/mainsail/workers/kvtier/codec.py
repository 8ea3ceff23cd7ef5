"""One KV block as one Redis value: a small header and the raw tensor bytes.

Why one value per block: a single SET is atomic, so a reader never sees data without its
metadata or half a block; and one key per block spreads evenly over Redis Cluster slots.
The header repeats the layout and the KV hash fingerprint, so a block written under other
parameters (another block size, dtype or model shape) is rejected instead of mis-read.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

import numpy as np
import torch

_MAGIC = b"MSKV1"
_HEADER_LEN = struct.Struct("<I")


@dataclass(frozen=True)
class BlockCodec:
    """Encodes and decodes blocks of one layout: (layers, 2, block_size, kv_heads, head_dim)."""

    layers: int
    block_size: int
    kv_heads: int
    head_dim: int
    dtype: torch.dtype
    fingerprint: str

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        return (self.layers, 2, self.block_size, self.kv_heads, self.head_dim)

    def _header(self) -> bytes:
        meta = {"shape": list(self.shape), "dtype": str(self.dtype), "fp": self.fingerprint}
        return json.dumps(meta, separators=(",", ":")).encode()

    def encode(self, block: torch.Tensor) -> bytes:
        """Bytes of ``block`` (shape `shape`, any device) with its header."""
        if tuple(block.shape) != self.shape:
            raise ValueError(f"block shape {tuple(block.shape)} != codec shape {self.shape}")
        header = self._header()
        data = block.detach().to("cpu", self.dtype).contiguous()
        raw = data.view(torch.uint8).numpy().tobytes()
        return _MAGIC + _HEADER_LEN.pack(len(header)) + header + raw

    def decode(self, value: bytes) -> torch.Tensor:
        """The block in ``value``; raises ValueError when it was written with another layout."""
        if not value.startswith(_MAGIC):
            raise ValueError("not a Mainsail KV block")
        offset = len(_MAGIC)
        (n,) = _HEADER_LEN.unpack_from(value, offset)
        offset += _HEADER_LEN.size
        header = value[offset : offset + n]
        if header != self._header():
            raise ValueError(f"KV block layout mismatch: {header.decode(errors='replace')}")
        raw = np.frombuffer(value, dtype=np.uint8, offset=offset + n)
        return torch.from_numpy(raw.copy()).view(self.dtype).reshape(self.shape)

    def block_bytes(self) -> int:
        """Size of one encoded block's tensor data."""
        elems = 1
        for d in self.shape:
            elems *= d
        return elems * torch.empty((), dtype=self.dtype).element_size()
