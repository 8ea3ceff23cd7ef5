"""Sharded engines against the one-process engine: the shared run-and-compare helpers.

Why one module: the tensor-, expert- and elastic-parallel tests all ask the same question —
does a sharded engine produce what one process produces? — and must ask it the same way:
greedy tokens equal, top-5 log-probs within ``ATOL`` at every generated position (sharded
matmuls sum partial products in another order, which moves float32 results by ~1e-6).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from mainsail.workers.engine import Engine, EngineConfig, EngineRequest, SamplingParams

ATOL = 1e-4
Result = dict[str, tuple[list[int], list[dict[int, float]]]]


def engine_config(**kw: Any) -> EngineConfig:
    """A small engine: one thread per rank, room for a batch of eight short prompts."""
    return EngineConfig(max_model_len=128, max_num_seqs=8, num_threads=1, **kw)


def random_prompt(n: int, salt: int) -> list[int]:
    """``n`` reproducible token ids (clear of the special ids) for a given salt."""
    g = torch.Generator().manual_seed(100 * salt + n)
    return torch.randint(3, 500, (n,), generator=g).tolist()


def greedy_params(tokens: int) -> SamplingParams:
    """Greedy, exactly ``tokens`` new tokens, top-5 log-probs kept for the comparison."""
    return SamplingParams(temperature=0.0, max_tokens=tokens, logprobs=5, ignore_eos=True)


def run_to_end(
    engine: Engine,
    prompts: dict[str, list[int]],
    tokens: int,
    max_steps: int = 20_000,
    adapters: Mapping[str, str | None] | None = None,
) -> Result:
    """Submit every prompt at once (with ``adapters[rid]``, the LoRA adapter it names, if
    given) and step until all finish (bounded by ``max_steps``)."""
    for rid, p in prompts.items():
        adapter = adapters.get(rid) if adapters is not None else None
        engine.add_request(EngineRequest(rid, p, greedy_params(tokens), adapter=adapter))
    got: Result = {rid: ([], []) for rid in prompts}
    for _ in range(max_steps):
        if not engine.has_unfinished():
            return got
        for out in engine.step():
            assert out.error is None, out.error
            got[out.request_id][0].extend(out.new_token_ids)
            got[out.request_id][1].extend(out.logprobs or [])
    raise AssertionError("engine did not finish")


def assert_matches(reference: Result, sharded: Result, tokens: int | None = None) -> None:
    """Same greedy tokens and the same top-5 log-probs within ``ATOL`` for every request.

    With ``tokens``, also that every request generated exactly that many.
    """
    for rid, (want_tokens, want_logprobs) in reference.items():
        got_tokens, got_logprobs = sharded[rid]
        assert got_tokens == want_tokens, rid
        if tokens is not None:
            assert len(got_logprobs) == len(want_logprobs) == tokens, rid
        for want, got in zip(want_logprobs, got_logprobs, strict=True):
            assert set(got) == set(want), rid
            for token, value in want.items():
                assert abs(got[token] - value) <= ATOL, (rid, token, got[token], value)
