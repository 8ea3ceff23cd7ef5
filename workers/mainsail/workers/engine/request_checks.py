"""What the engine checks a request against before the request touches any state.

Why a module of its own: the same checks serve a new request (`Engine.add_request`), a request
moved here with its KV (`Engine.adopt`) and the announcement of such a move
(`KVAdoptions.prepare`, off the engine thread). They read only limits fixed when the engine
starts, so they are pure functions of the request and an `EngineLimits`; each refusal is an
`EngineInputError` whose message names the field and the limit.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from mainsail.workers.engine.errors import EngineInputError
from mainsail.workers.engine.request import EngineRequest


@dataclass(frozen=True)
class EngineLimits:
    """The fixed limits of one engine."""

    vocab_size: int
    """Token ids must be in ``[0, vocab_size)``."""
    max_model_len: int
    """Prompt plus ``max_tokens``, in tokens."""
    block_size: int
    """Tokens per KV block."""
    num_blocks: int
    """KV blocks in the whole cache: a request that needs more can never run."""


def check_token_ids(tokens: Iterable[object], vocab_size: int, what: str = "token id") -> None:
    """Raise `EngineInputError` for the first of ``tokens`` that is not an id in the
    vocabulary (``what`` names it in the message)."""
    for t in tokens:
        if not isinstance(t, int) or not 0 <= t < vocab_size:
            raise EngineInputError(f"{what} {t!r} is outside the vocabulary [0, {vocab_size})")


def check_request(
    req: EngineRequest, limits: EngineLimits, adapters: Sequence[str], checked: int = 0
) -> None:
    """Raise `EngineInputError` if ``req`` cannot be served by an engine with ``limits`` and
    the LoRA ``adapters`` loaded; the first ``checked`` prompt tokens are known to be in the
    vocabulary already."""
    if not isinstance(req.request_id, str) or not req.request_id:
        raise EngineInputError("request_id must be a non-empty string")
    if not req.prompt_token_ids:
        raise EngineInputError("prompt is empty: at least one token is needed")
    vocab = limits.vocab_size
    prompt = req.prompt_token_ids
    check_token_ids(prompt[checked:] if checked else prompt, vocab, "prompt token id")
    req.sampling.validate()
    for t in req.sampling.stop_token_ids:
        if t >= vocab:
            raise EngineInputError(f"stop token id {t} is outside the vocabulary [0, {vocab})")
    total = len(req.prompt_token_ids) + req.sampling.max_tokens
    if total > limits.max_model_len:
        raise EngineInputError(
            f"prompt ({len(req.prompt_token_ids)} tokens) + max_tokens "
            f"({req.sampling.max_tokens}) = {total} exceeds max_model_len "
            f"{limits.max_model_len}"
        )
    needed = -(-total // limits.block_size)
    if needed > limits.num_blocks:
        raise EngineInputError(
            f"request needs {needed} KV blocks, the engine has {limits.num_blocks}"
        )
    if req.adapter is not None and req.adapter not in adapters:
        raise EngineInputError(
            f"adapter {req.adapter!r} is not loaded on this engine (loaded: {adapters or 'none'})"
        )
