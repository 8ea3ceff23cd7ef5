"""Sampling settings are validated, and the sampler honours greedy, top-k, top-p and seeds."""

from __future__ import annotations

import math

import pytest
import torch

from mainsail.workers.engine import EngineInputError, SamplingParams
from mainsail.workers.engine.sampler import SampleRequest, sample


def _row(params: SamplingParams, seed: int = 0) -> SampleRequest:
    return SampleRequest(params, torch.Generator().manual_seed(seed))


@pytest.mark.unit
@pytest.mark.parametrize(
    ("params", "field"),
    [
        (SamplingParams(temperature=-1), "temperature"),
        (SamplingParams(temperature=math.nan), "temperature"),
        (SamplingParams(temperature=1e9), "temperature"),
        (SamplingParams(top_p=0.0), "top_p"),
        (SamplingParams(top_p=1.5), "top_p"),
        (SamplingParams(top_k=-3), "top_k"),
        (SamplingParams(seed=-1), "seed"),
        (SamplingParams(max_tokens=0), "max_tokens"),
        (SamplingParams(stop=("",)), "stop"),
        (SamplingParams(stop_token_ids=(-5,)), "stop_token_ids"),
        (SamplingParams(logprobs=1000), "logprobs"),
    ],
)
def test_absurd_values_are_refused_naming_the_field(params: SamplingParams, field: str) -> None:
    with pytest.raises(EngineInputError, match=field):
        params.validate()


@pytest.mark.unit
def test_defaults_are_valid() -> None:
    SamplingParams().validate()
    SamplingParams(temperature=0, top_k=5, top_p=0.9, seed=3, logprobs=20).validate()


@pytest.mark.unit
def test_greedy_takes_argmax_and_reports_logprobs() -> None:
    logits = torch.tensor([[0.0, 3.0, 1.0, -2.0]])
    tokens, lps = sample(logits, [_row(SamplingParams(temperature=0, logprobs=2))])
    assert tokens == [1]
    expected = torch.log_softmax(logits[0], dim=-1)
    assert lps[0] is not None and set(lps[0]) == {1, 2}
    assert lps[0][1] == pytest.approx(float(expected[1]))


@pytest.mark.unit
def test_top_k_and_top_p_restrict_the_support() -> None:
    logits = torch.tensor([[5.0, 4.9, 0.0, -1.0, -2.0]]).repeat(200, 1)
    top_k = sample(logits, [_row(SamplingParams(top_k=2), seed=i) for i in range(200)])[0]
    assert set(top_k) == {0, 1}
    top_p = sample(logits, [_row(SamplingParams(top_p=0.5), seed=i) for i in range(200)])[0]
    assert set(top_p) == {0}


@pytest.mark.unit
def test_seeded_rows_are_reproducible_and_independent_of_batch() -> None:
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(1))
    params = SamplingParams(temperature=1.0, seed=7)
    alone = [sample(logits[i : i + 1], [_row(params, seed=7)])[0][0] for i in range(4)]
    batch = sample(logits, [_row(params, seed=7) for _ in range(4)])[0]
    assert alone == batch
