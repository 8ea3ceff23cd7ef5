"""Prompt synthesis: token ids and engine block hashes from a trace's 512-token block ids.

Why: the traces publish which prompts share prefixes (equal block ids at equal positions) but
not the prompts. We give each trace block id a deterministic 512-token content, so two prompts
share exactly the tokens the trace says they share, and then name engine blocks with the one
real hash, `mainsail.spec.kvhash.chain_hashes`. The router's index and scorers therefore see
the same block ids they would see in production, at any engine block size that divides 512.

Content of trace block ``b``: ``SHAKE-128(le_u64(b) || le_u64(seed))`` read as little-endian
u32 words, each taken modulo ``vocab_size``. A prompt of ``n`` tokens is the concatenation of
its blocks' contents, cut to ``n`` tokens.

Cost: hashing is memoised per (parent hash, trace block id), since the chain over a 512-token
block depends only on its parent hash and its content. The memo is bounded (``memo_hashes``)
and generational: when the young generation fills, it becomes the old one and the previous
old one is dropped, which costs recomputation, never correctness. The hot loop feeds the
u32 token bytes straight into a pre-keyed BLAKE2b instead of calling ``chain_hashes`` (2x
faster); `PromptHasher` checks on construction that both give identical ids and refuses to run
otherwise, so the one hash definition stays in ``mainsail.spec.kvhash``.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

import numpy as np

from mainsail.sim.traces import TRACE_BLOCK_TOKENS
from mainsail.spec.kvhash import adapter_seed, block_hash, chain_hashes

_KEY = b"mainsail-kv-v1"
"""BLAKE2b key of `mainsail.spec.kvhash` (checked by `PromptHasher._self_check`)."""


def _trace_block_bytes(block_id: int, seed: int, vocab_size: int, namespace: int = 0) -> bytes:
    """Little-endian u32 token ids of one trace block."""
    key = struct.pack("<QQ", block_id % 2**64, seed % 2**64)
    if namespace:
        key += struct.pack("<Q", namespace % 2**64)
    raw = hashlib.shake_128(key).digest(4 * TRACE_BLOCK_TOKENS)
    words = np.frombuffer(raw, dtype="<u4") % np.uint32(vocab_size)
    return words.astype("<u4").tobytes()


def trace_block_tokens(
    block_id: int, seed: int = 0, vocab_size: int = 32_000, namespace: int = 0
) -> list[int]:
    """The 512 token ids of one trace block (deterministic in its arguments)."""
    raw = _trace_block_bytes(block_id, seed, vocab_size, namespace)
    return list(struct.unpack(f"<{TRACE_BLOCK_TOKENS}I", raw))


def prompt_tokens(
    block_ids: Sequence[int],
    input_tokens: int,
    seed: int = 0,
    vocab_size: int = 32_000,
    namespace: int = 0,
) -> list[int]:
    """Token ids of a whole prompt: its blocks' contents concatenated and cut to length."""
    out: list[int] = []
    for b in block_ids:
        out.extend(trace_block_tokens(b, seed, vocab_size, namespace))
    return out[:input_tokens]


class PromptHasher:
    """Engine block hashes of trace prompts, equal to ``chain_hashes(prompt_tokens(...))``.

    ``block_size`` must divide 512 so engine blocks never straddle two trace blocks.
    """

    def __init__(
        self,
        block_size: int,
        hash_seed: int = 0,
        content_seed: int = 0,
        vocab_size: int = 32_000,
        memo_hashes: int = 1_000_000,
    ) -> None:
        if block_size < 1 or TRACE_BLOCK_TOKENS % block_size:
            raise ValueError(f"block_size must divide {TRACE_BLOCK_TOKENS}, got {block_size}")
        self.block_size = block_size
        self.hash_seed = hash_seed
        self._content_seed = content_seed
        self._vocab = vocab_size
        self._memo: dict[tuple[int, int, int], list[int]] = {}
        self._old: dict[tuple[int, int, int], list[int]] = {}
        self._memo_cap = max(1, memo_hashes // (TRACE_BLOCK_TOKENS // block_size))
        self._keyed = hashlib.blake2b(digest_size=8, key=_KEY)
        self._self_check()

    def _self_check(self) -> None:
        """Refuse to run if the fast path disagrees with `mainsail.spec.kvhash`."""
        tokens = trace_block_tokens(12345, self._content_seed, self._vocab)
        parent = self.hash_seed
        if self._chain_block(12345, parent) != chain_hashes(tokens, self.block_size, parent):
            raise RuntimeError("PromptHasher fast path disagrees with mainsail.spec.kvhash")
        if block_hash(parent, tokens[: self.block_size]) != self._chain_block(12345, parent)[0]:
            raise RuntimeError("PromptHasher fast path disagrees with kvhash.block_hash")

    def _chain_block(self, block_id: int, parent: int, namespace: int = 0) -> list[int]:
        """Chained engine hashes of one trace block's content, continuing from ``parent``."""
        data = _trace_block_bytes(block_id, self._content_seed, self._vocab, namespace)
        step = 4 * self.block_size
        keyed = self._keyed
        out: list[int] = []
        for start in range(0, len(data), step):
            h = keyed.copy()
            h.update(parent.to_bytes(8, "little"))
            h.update(data[start : start + step])
            parent = int.from_bytes(h.digest(), "little")
            out.append(parent)
        return out

    def block_hashes(
        self, block_ids: Sequence[int], input_tokens: int, namespace: int = 0
    ) -> list[int]:
        """Hashes of every full engine block of the prompt, in order."""
        per_trace_block = TRACE_BLOCK_TOKENS // self.block_size
        n_full = input_tokens // self.block_size
        out: list[int] = []
        parent = adapter_seed(self.hash_seed, None)
        memo = self._memo
        for b in block_ids:
            if len(out) >= n_full:
                break
            key = (parent, b, namespace)
            chunk = memo.get(key)
            if chunk is None:
                chunk = self._old.get(key) or self._chain_block(b, parent, namespace)
                if len(memo) >= self._memo_cap:
                    self._old, memo = memo, {}
                    self._memo = memo
                memo[key] = chunk
            take = min(per_trace_block, n_full - len(out))
            out.extend(chunk[:take] if take < per_trace_block else chunk)
            parent = chunk[-1]
        return out
