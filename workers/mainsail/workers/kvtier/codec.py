"""One KV block as one Redis value: a small header and the raw tensor bytes.

Why one value per block: a single SET is atomic, so a reader never sees data without its
metadata or half a block; and one key per block spreads evenly over Redis Cluster slots.
The header repeats the layout and the KV hash fingerprint, so a block written under other
parameters (another block size, dtype or model shape) is rejected instead of mis-read; the
value ends with a checksum of the data (`checksum.py`), so a damaged block is a miss.
Layout: ``MSKV2 | le_u32 header length | JSON header | data | BLAKE2b-64(data)``.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from mainsail.workers.kvtier.checksum import CHECKSUM_BYTES, block_checksum, checksum_rows

_MAGIC = b"MSKV2"
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

    @property
    def header(self) -> bytes:
        """The bytes every value of this layout starts with (magic, length, JSON header)."""
        return self._prefix

    def _header(self) -> bytes:
        return self._prefix[len(_MAGIC) + _HEADER_LEN.size :]

    def parts(self, block: torch.Tensor) -> tuple[bytes, memoryview, bytes]:
        """The value of ``block`` as (header, data, checksum), the data a view of the block's
        memory.

        No copy when ``block`` is a contiguous CPU tensor of the codec's dtype (as the engine
        hands them over); `RedisKVTier.store` sends the parts as one value.
        """
        if tuple(block.shape) != self.shape:
            raise ValueError(f"block shape {tuple(block.shape)} != codec shape {self.shape}")
        block = block.detach()
        if block.device.type != "cpu" or block.dtype != self.dtype or not block.is_contiguous():
            block = block.to("cpu", self.dtype).contiguous()
        data = block.view(torch.uint8).numpy().reshape(-1).data
        return self._prefix, data, block_checksum(data)

    def rows(self, blocks: Sequence[torch.Tensor]) -> np.ndarray:
        """The data of ``blocks`` as one uint8 array, a row per block (one copy in all), each
        row followed by its checksum (the value after the header).

        For batches of small blocks (`RespBatch`), where a view per block costs more than
        copying its bytes.
        """
        shape = torch.Size(self.shape)
        if any(b.shape != shape for b in blocks):
            raise ValueError(f"block shapes differ from codec shape {self.shape}")
        with torch.inference_mode():  # no autograd history, so no per-block detach
            stacked = torch.stack(list(blocks)).to("cpu", self.dtype)
        data = stacked.contiguous().view(torch.uint8).reshape(len(blocks), -1).numpy()
        rows: np.ndarray = np.empty((len(blocks), data.shape[1] + CHECKSUM_BYTES), np.uint8)
        rows[:, : data.shape[1]] = data
        rows[:, data.shape[1] :] = checksum_rows(data)
        return rows

    def encode(self, block: torch.Tensor) -> bytearray:
        """Bytes of ``block`` (shape `shape`, any device) with its header (one copy)."""
        head, data, check = self.parts(block)
        out = bytearray(len(head) + data.nbytes + len(check))
        out[: len(head)] = head
        memoryview(out)[len(head) : len(head) + data.nbytes] = data
        out[len(head) + data.nbytes :] = check
        return out

    def decode(self, value: bytes | bytearray) -> torch.Tensor:
        """The block in ``value``; raises ValueError when it was written with another layout."""
        out = torch.empty(self.shape, dtype=self.dtype)
        self.decode_into(value, out)
        return out

    def decode_into(self, value: bytes | bytearray, out: torch.Tensor) -> None:
        """Copy the block in ``value`` into ``out`` (a contiguous CPU tensor of `shape`).

        Raises ValueError when ``value`` was written with another layout, is truncated or
        fails its checksum.
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
        if raw.size != self.block_bytes() + CHECKSUM_BYTES:
            raise ValueError(f"KV block truncated: {raw.size} of {self.block_bytes()} bytes")
        raw, check = raw[: self.block_bytes()], raw[self.block_bytes() :]
        if block_checksum(raw) != check.tobytes():
            raise ValueError("KV block corrupt: checksum mismatch")
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
