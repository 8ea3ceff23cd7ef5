"""`ModelRunner`: owns the model and its paged KV cache, and runs one scheduled step.

It flattens the step's tokens (prefill chunks and decodes) into one batch, builds the
attention metadata once for all layers (slot of every new token, padded block tables and
length mask for the decodes, causal spans for the prefills), performs pending copy-on-write
block copies, runs the model and returns float32 logits only for the rows to sample. Each
sequence's LoRA adapter slot (0 = base model) is repeated over its rows and handed to the
resident `AdapterSet` for the duration of the forward.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from mainsail.workers.models import AdapterSet, KVCache, LlamaForCausalLM, ModelConfig
from mainsail.workers.models.attention import AttentionBatch, DecodeGroup, PrefillSpan


@dataclass(frozen=True)
class StepInput:
    """One sequence's share of a step: its tokens' ids, first position, block table and LoRA
    adapter slot (0 = none)."""

    token_ids: Sequence[int]
    start: int
    block_ids: Sequence[int]
    wants_logits: bool
    adapter: int = 0


class StepRunner(Protocol):
    """What the engine needs of a runner: this module's `ModelRunner` (one process) or
    `mainsail.workers.parallel.ShardedRunner` (the model split over rank actors)."""

    device: torch.device
    dtype: torch.dtype

    @property
    def kv_cache_bytes(self) -> int: ...

    def copy_blocks(self, copies: Sequence[tuple[int, int]]) -> None: ...

    def read_blocks(self, block_ids: Sequence[int]) -> torch.Tensor: ...

    def write_blocks(self, block_ids: Sequence[int], blocks: torch.Tensor) -> None: ...

    def execute(self, inputs: Sequence[StepInput]) -> torch.Tensor: ...


class ModelRunner:
    """Runs the model over paged KV blocks on one device."""

    def __init__(
        self,
        model: LlamaForCausalLM,
        cfg: ModelConfig,
        num_blocks: int,
        block_size: int,
        adapters: AdapterSet | None = None,
    ) -> None:
        self.model = model
        self.adapters = adapters
        self.block_size = block_size
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        shape = (num_blocks, block_size, cfg.num_kv_heads, cfg.head_dim)
        self.caches: list[KVCache] = [
            (
                torch.zeros(shape, dtype=self.dtype, device=self.device),
                torch.zeros(shape, dtype=self.dtype, device=self.device),
            )
            for _ in range(cfg.num_layers)
        ]

    @property
    def kv_cache_bytes(self) -> int:
        """Memory held by the KV cache."""
        return sum(k.numel() * k.element_size() * 2 for k, _ in self.caches)

    def copy_blocks(self, copies: Sequence[tuple[int, int]]) -> None:
        """Copy-on-write: duplicate block ``src`` into ``dst`` in every layer."""
        for src, dst in copies:
            for k, v in self.caches:
                k[dst].copy_(k[src])
                v[dst].copy_(v[src])

    @torch.inference_mode()
    def read_blocks(self, block_ids: Sequence[int]) -> torch.Tensor:
        """A private copy of blocks: ``[n, layers, 2 (k, v), block_size, kv_heads, head_dim]``."""
        idx = torch.tensor(list(block_ids), dtype=torch.long, device=self.device)
        shape = (len(block_ids), len(self.caches), 2, *self.caches[0][0].shape[1:])
        out = torch.empty(shape, dtype=self.dtype, device=self.device)
        for layer, (k, v) in enumerate(self.caches):
            out[:, layer, 0] = k.index_select(0, idx)
            out[:, layer, 1] = v.index_select(0, idx)
        return out

    @torch.inference_mode()
    def write_blocks(self, block_ids: Sequence[int], blocks: torch.Tensor) -> None:
        """Overwrite blocks with ``blocks`` (layout of `read_blocks`, any device or dtype)."""
        if blocks.shape[0] != len(block_ids) or blocks.shape[1] != len(self.caches):
            raise ValueError(f"{len(block_ids)} block ids for blocks {tuple(blocks.shape)}")
        idx = torch.tensor(list(block_ids), dtype=torch.long, device=self.device)
        data = blocks.to(self.device, self.dtype)
        for layer, (k, v) in enumerate(self.caches):
            k.index_copy_(0, idx, data[:, layer, 0])
            v.index_copy_(0, idx, data[:, layer, 1])

    @torch.inference_mode()
    def execute(self, inputs: Sequence[StepInput]) -> torch.Tensor:
        """Logits ``[rows wanting logits, vocab]`` (float32), in the order of ``inputs``."""
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        logit_at: dict[int, int] = {}
        decode_rows: list[int] = []
        decode_seqs: list[StepInput] = []
        prefills: list[PrefillSpan] = []
        row_adapters: list[int] = []
        bs = self.block_size
        order: Sequence[int] = range(len(inputs))
        if self.adapters is not None and any(item.adapter for item in inputs):
            # One adapter's rows made contiguous: its LoRA updates work on slices, not gathers.
            order = sorted(order, key=lambda i: inputs[i].adapter)
        for i in order:
            item = inputs[i]
            offset, n = len(ids), len(item.token_ids)
            ids.extend(item.token_ids)
            row_adapters.extend([item.adapter] * n)
            for p in range(item.start, item.start + n):
                positions.append(p)
                slots.append(item.block_ids[p // bs] * bs + p % bs)
            if n == 1:
                decode_rows.append(offset)
                decode_seqs.append(item)
            else:
                used = -(-(item.start + n) // bs)
                blocks = torch.tensor(item.block_ids[:used], device=self.device)
                prefills.append(PrefillSpan(offset, offset + n, item.start + n, blocks))
            if item.wants_logits:
                logit_at[i] = offset + n - 1
        batch = AttentionBatch(
            slot_mapping=torch.tensor(slots, dtype=torch.long, device=self.device),
            decode=self._decode_group(decode_rows, decode_seqs),
            prefills=prefills,
        )
        lora = (
            self.adapters.activate(row_adapters, self.device)
            if self.adapters is not None
            else contextlib.nullcontext()
        )
        with lora:
            hidden = self.model(
                torch.tensor(ids, device=self.device),
                torch.tensor(positions, device=self.device),
                self.caches,
                batch,
            )
        logit_rows = [logit_at[i] for i in range(len(inputs)) if i in logit_at]
        rows = torch.tensor(logit_rows, dtype=torch.long, device=self.device)
        return self.model.compute_logits(hidden[rows])

    def _decode_group(self, rows: list[int], seqs: list[StepInput]) -> DecodeGroup | None:
        if not rows:
            return None
        bs = self.block_size
        lengths = [s.start + 1 for s in seqs]
        width = max(-(-n // bs) for n in lengths)
        tables = [list(s.block_ids[: -(-n // bs)]) for s, n in zip(seqs, lengths, strict=True)]
        padded = torch.tensor([t + [0] * (width - len(t)) for t in tables], device=self.device)
        keys = torch.arange(width * bs, device=self.device)
        mask = keys.unsqueeze(0) < torch.tensor(lengths, device=self.device).unsqueeze(1)
        return DecodeGroup(
            index=torch.tensor(rows, device=self.device),
            tables=padded,
            mask=mask[:, None, None, :],
        )
