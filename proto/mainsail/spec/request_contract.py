"""The one validation contract of a generation request, shared by both router fronts and the
worker.

Why one: when the router accepts something a worker refuses, the refusal arrives as a failed
stream, and a router that cannot tell a refusal from a broken worker evicts the worker and
retries on the next one — one bad request empties the fleet. So every bound a worker enforces
on a request is written here once; the router's fronts check it before dispatch (a 400 /
INVALID_ARGUMENT naming the field) and the worker checks the same thing on arrival. The HTTP
schema takes its numeric bounds from these constants so JSON can never overflow a proto field
(an int64 seed of 10**30 is a 400, not a 500).

The only refusal the router cannot see coming is capacity a worker reports about itself (more
KV blocks than it has); the router treats any worker refusal as that request's error, never as
the worker's failure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from mainsail.proto.v1 import mainsail_pb2 as pb

INT32_MAX = 2**31 - 1
TEMPERATURE_MAX = 2.0
"""The OpenAI range [0, 2]; the engine itself could sample hotter, clients have no use for it."""
MAX_LOGPROBS = 20
MAX_STOP_STRINGS = 16
MAX_STOP_LEN = 256
MAX_STOP_TOKEN_IDS = 64
MAX_TOKENS_LIMIT = 1 << 20
DEFAULT_MAX_TOKENS = 16
"""`max_tokens` of a request that names none (the OpenAI default): the router fills it in, and a
worker receiving a request without it (a direct `Worker.Submit`) picks the same number."""
TOP_K_MAX = 1 << 20
SEED_MAX = 2**63 - 1
PRIORITY_MAX = 100
MAX_MESSAGES = 4096
MAX_ID_LEN = 128
"""Client-supplied labels (request id, SLO class, adapter names) longer than this are refused."""


class FieldError(ValueError):
    """A request field outside the contract; ``param`` is its name as clients spell it."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param
        self.message = message


def check_sampling(s: pb.SamplingParams, *, vocab_size: int | None = None) -> None:
    """Raise `FieldError` for the first sampling field a worker would refuse."""
    if s.HasField("temperature"):
        t = s.temperature
        if not math.isfinite(t) or not 0.0 <= t <= TEMPERATURE_MAX:
            raise FieldError("temperature", f"temperature must be in [0, {TEMPERATURE_MAX:g}].")
    if s.HasField("top_p") and (not math.isfinite(s.top_p) or not 0.0 < s.top_p <= 1.0):
        raise FieldError("top_p", "top_p must be in (0, 1].")
    if not 0 <= s.top_k <= TOP_K_MAX:
        raise FieldError("top_k", f"top_k must be in [0, {TOP_K_MAX}] (0 disables it).")
    if s.HasField("seed") and not 0 <= s.seed <= SEED_MAX:
        raise FieldError("seed", f"seed must be in [0, {SEED_MAX}].")
    if not 0 <= s.max_tokens <= MAX_TOKENS_LIMIT:
        raise FieldError("max_tokens", f"max_tokens must be in [1, {MAX_TOKENS_LIMIT}].")
    check_stop(s.stop)
    if len(s.stop_token_ids) > MAX_STOP_TOKEN_IDS:
        raise FieldError(
            "stop_token_ids", f"at most {MAX_STOP_TOKEN_IDS} stop token ids are allowed."
        )
    upper = vocab_size if vocab_size is not None else INT32_MAX + 1
    for token in s.stop_token_ids:
        if not 0 <= token < upper:
            raise FieldError("stop_token_ids", f"stop token ids must be in [0, {upper}).")
    if not 0 <= s.logprobs <= MAX_LOGPROBS:
        raise FieldError("logprobs", f"logprobs must be in [0, {MAX_LOGPROBS}].")


def check_stop(stop: Sequence[str]) -> None:
    """Stop strings: at most `MAX_STOP_STRINGS`, each non-empty and at most `MAX_STOP_LEN`."""
    if len(stop) > MAX_STOP_STRINGS:
        raise FieldError("stop", f"at most {MAX_STOP_STRINGS} stop sequences are allowed.")
    for text in stop:
        if not 0 < len(text) <= MAX_STOP_LEN:
            raise FieldError("stop", f"stop sequences must be 1 to {MAX_STOP_LEN} characters long.")


def check_prompt_ids(token_ids: Sequence[int], vocab_size: int) -> None:
    """Every prompt token id is in the vocabulary; the prompt is not empty."""
    if not token_ids:
        raise FieldError("prompt", "The prompt is empty: at least one token is needed.")
    bad = [t for t in token_ids if not 0 <= t < vocab_size]
    if bad:
        raise FieldError("prompt", f"Token ids must be in [0, {vocab_size}); got {bad[:5]}.")


def check_context(prompt_tokens: int, max_tokens: int, max_model_len: int) -> None:
    """Prompt plus completion fit the model's context."""
    total = prompt_tokens + max_tokens
    if total > max_model_len:
        raise FieldError(
            "max_tokens",
            f"This model's maximum context length is {max_model_len} tokens. However, you "
            f"requested {total} tokens ({prompt_tokens} in the prompt, {max_tokens} in the "
            "completion). Please reduce the prompt or max_tokens.",
        )


def check_label(param: str, value: str) -> None:
    """Client-chosen names and ids: short printable ASCII (they end up in logs and headers)."""
    if len(value) > MAX_ID_LEN:
        raise FieldError(param, f"{param} must be at most {MAX_ID_LEN} characters.")
    if value and not (value.isascii() and value.isprintable()):
        raise FieldError(param, f"{param} must be printable ASCII.")


def check_worker_request(request: pb.WorkerRequest, *, vocab_size: int, max_model_len: int) -> None:
    """What a worker checks on arrival, before its engine sees the request."""
    if not request.request_id:
        raise FieldError("request_id", "request_id must not be empty.")
    check_label("request_id", request.request_id)
    check_prompt_ids(request.prompt_token_ids, vocab_size)
    check_sampling(request.sampling, vocab_size=vocab_size)
    check_context(len(request.prompt_token_ids), request.sampling.max_tokens, max_model_len)
    if not 0 <= request.sampled_before <= len(request.prompt_token_ids):
        raise FieldError("sampled_before", "sampled_before must be in [0, prompt length].")
    for name in ("ttft_deadline", "tpot_target"):
        value = getattr(request, name)
        if not math.isfinite(value) or value < 0:
            raise FieldError(name, f"{name} must be a finite number >= 0 (0: none).")
