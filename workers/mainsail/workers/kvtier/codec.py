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
from functools import cached_property

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

    @cached_property
    def _prefix(self) -> bytes:
        meta = {"shape": list(self.shape), "dtype": str(self.dtype), "fp": self.fingerprint}
        header = json.dumps(meta, separators=(",", ":")).encode()
        return _MAGIC + _HEADER_LEN.pack(len(header)) + header

    def _header(self) -> bytes:
        return self._prefix[len(_MAGIC) + _HEADER_LEN.size :]

    def encode(self, block: torch.Tensor) -> bytearray:
        """Bytes of ``block`` (shape `shape`, any device) with its header (one copy)."""
        if tuple(block.shape) != self.shape:
            raise ValueError(f"block shape {tuple(block.shape)} != codec shape {self.shape}")
        block = block.detach()
        if block.device.type != "cpu" or block.dtype != self.dtype or not block.is_contiguous():
            block = block.to("cpu", self.dtype).contiguous()
        raw = block.view(torch.uint8).numpy().reshape(-1)
        head = len(self._prefix)
        out = bytearray(head + raw.nbytes)
        out[:head] = self._prefix
        memoryview(out)[head:] = raw.data
        return out

    def decode(self, value: bytes | bytearray) -> torch.Tensor:
        """The block in ``value``; raises ValueError when it was written with another layout."""
        out = torch.empty(self.shape, dtype=self.dtype)
        self.decode_into(value, out)
        return out

    def decode_into(self, value: bytes | bytearray, out: torch.Tensor) -> None:
        """Copy the block in ``value`` into ``out`` (a contiguous CPU tensor of `shape`).

        Raises ValueError when ``value`` was written with another layout or is truncated.
        """
        if not value.startswith(_MAGIC):
            raise ValueError("not a Mainsail KV block")
        offset = len(_MAGIC)
        (n,) = _HEADER_LEN.unpack_from(value, offset)
        offset += _HEADER_LEN.size
        header = value[offset : offset + n]
        if header != self._header():
            raise ValueError(f"KV block layout mismatch: {bytes(header).decode(errors='replace')}")
        raw = np.frombuffer(value, dtype=np.uint8, offset=offset + n)
        if raw.size != self.block_bytes():
            raise ValueError(f"KV block truncated: {raw.size} of {self.block_bytes()} bytes")
        if (
            tuple(out.shape) != self.shape
            or out.dtype != self.dtype
            or out.device.type != "cpu"
            or not out.is_contiguous()
        ):
            raise ValueError(f"decode target must be a contiguous CPU {self.dtype} {self.shape}")
        out.view(torch.uint8).reshape(-1).numpy()[:] = raw

    def block_bytes(self) -> int:
        """Size of one encoded block's tensor data."""
        return self._block_bytes

    @cached_property
    def _block_bytes(self) -> int:
        elems = 1
        for d in self.shape:
            elems *= d
        return elems * torch.empty((), dtype=self.dtype).element_size()
