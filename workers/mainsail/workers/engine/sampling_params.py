"""`SamplingParams`: how one request picks its tokens and when it stops.

Absurd values are refused up front by `validate()` (raising `EngineInputError`) so that a bad
request never reaches a batch it could poison. Bounds are generous but finite.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mainsail.spec.request_contract import (
    DEFAULT_MAX_TOKENS,
    MAX_LOGPROBS,
    MAX_STOP_LEN,
    MAX_STOP_STRINGS,
    MAX_TOKENS_LIMIT,
)
from mainsail.workers.engine.errors import EngineInputError

__all__ = ["MAX_LOGPROBS", "MAX_STOP_LEN", "MAX_STOP_STRINGS", "MAX_TOKENS_LIMIT", "SamplingParams"]


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling settings.

    * ``temperature``: 0 means greedy (argmax); otherwise logits are divided by it. [0, 100].
    * ``top_p``: nucleus sampling mass in (0, 1]; 1 disables it.
    * ``top_k``: keep the k most likely tokens; 0 disables it.
    * ``seed``: seeds this request's own generator, so its samples do not depend on batching.
    * ``max_tokens``: most tokens to generate (>= 1).
    * ``stop``: strings that end generation; the stop string itself is never emitted.
    * ``stop_token_ids``: token ids that end generation (like end-of-sequence).
    * ``logprobs``: return the top-n log-probabilities (of the raw logits) per token, 0..20.
    * ``ignore_eos``: keep generating past end-of-sequence tokens (benchmarks).
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    max_tokens: int = DEFAULT_MAX_TOKENS
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    logprobs: int | None = None
    ignore_eos: bool = False

    @property
    def greedy(self) -> bool:
        """True when the most likely token is always taken."""
        return self.temperature == 0.0 or self.top_k == 1

    def validate(self) -> None:
        """Raise `EngineInputError` naming the first unusable field."""
        if not isinstance(self.temperature, int | float) or not math.isfinite(self.temperature):
            raise EngineInputError(f"temperature must be a finite number, got {self.temperature!r}")
        if not 0.0 <= self.temperature <= 100.0:
            raise EngineInputError(f"temperature must be in [0, 100], got {self.temperature}")
        if not isinstance(self.top_p, int | float) or not 0.0 < self.top_p <= 1.0:
            raise EngineInputError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise EngineInputError(f"top_k must be an integer >= 0 (0 = off), got {self.top_k!r}")
        if self.seed is not None and (not isinstance(self.seed, int) or not 0 <= self.seed < 2**63):
            raise EngineInputError(f"seed must be an integer in [0, 2**63), got {self.seed!r}")
        if not isinstance(self.max_tokens, int) or not 1 <= self.max_tokens <= MAX_TOKENS_LIMIT:
            raise EngineInputError(
                f"max_tokens must be an integer in [1, {MAX_TOKENS_LIMIT}], got {self.max_tokens!r}"
            )
        if len(self.stop) > MAX_STOP_STRINGS:
            raise EngineInputError(f"at most {MAX_STOP_STRINGS} stop strings, got {len(self.stop)}")
        for s in self.stop:
            if not isinstance(s, str) or not 0 < len(s) <= MAX_STOP_LEN:
                raise EngineInputError(
                    f"stop strings must be non-empty and at most {MAX_STOP_LEN} chars, got {s!r}"
                )
        for t in self.stop_token_ids:
            if not isinstance(t, int) or t < 0:
                raise EngineInputError(f"stop_token_ids must be integers >= 0, got {t!r}")
        if self.logprobs is not None and (
            not isinstance(self.logprobs, int) or not 0 <= self.logprobs <= MAX_LOGPROBS
        ):
            raise EngineInputError(
                f"logprobs must be an integer in [0, {MAX_LOGPROBS}], got {self.logprobs!r}"
            )
