"""`sample`: picks one token per row of logits, each row with its own `SamplingParams`.

Greedy rows take the argmax. Other rows: divide by temperature, keep the top-k, keep the
smallest set of tokens whose probability mass reaches top-p, then draw with the request's own
`torch.Generator` (so a seeded request gives the same tokens alone or in any batch).
Log-probabilities, when asked for, are of the raw logits (before temperature and filtering).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mainsail.workers.engine.sampling_params import SamplingParams


@dataclass(frozen=True)
class SampleRequest:
    """What the sampler needs of one row."""

    params: SamplingParams
    generator: torch.Generator


def _filter(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Scaled logits with tokens outside top-k / top-p set to -inf (1-D)."""
    scaled = logits / params.temperature
    if 0 < params.top_k < scaled.numel():
        kth = torch.topk(scaled, params.top_k).values[-1]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(scaled, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs
        drop = before >= params.top_p
        scaled = scaled.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    return scaled


def sample(
    logits: torch.Tensor, rows: Sequence[SampleRequest]
) -> tuple[list[int], list[dict[int, float] | None]]:
    """Chosen token ids and (where requested) top-n logprobs dicts, one per row."""
    if logits.shape[0] != len(rows):
        raise ValueError(f"{logits.shape[0]} rows of logits for {len(rows)} requests")
    greedy = logits.argmax(dim=-1).tolist()
    tokens: list[int] = []
    for i, row in enumerate(rows):
        if row.params.greedy:
            tokens.append(int(greedy[i]))
            continue
        probs = torch.softmax(_filter(logits[i], row.params), dim=-1)
        tokens.append(int(torch.multinomial(probs, 1, generator=row.generator).item()))
    logprobs: list[dict[int, float] | None] = [None] * len(rows)
    wanted = [i for i, r in enumerate(rows) if r.params.logprobs is not None]
    if wanted:
        lp = torch.log_softmax(logits[wanted], dim=-1)
        for j, i in enumerate(wanted):
            n = rows[i].params.logprobs or 0
            top: dict[int, float] = {}
            if n:
                values, ids = torch.topk(lp[j], n)
                top = dict(zip(ids.tolist(), values.tolist(), strict=True))
            top[tokens[i]] = float(lp[j, tokens[i]])
            logprobs[i] = top
    return tokens, logprobs
