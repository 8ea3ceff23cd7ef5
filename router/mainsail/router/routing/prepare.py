"""Turning a client's request into what the router schedules: checked, tokenized, hashed.

Why apart from dispatch: everything here is a pure function of the request and the router's
configuration (no workers, no I/O), and every refusal is a 4xx that names the bad field, so it
is tested table-driven without a transport. The prompt's block hashes are computed once here,
with the deployment's KV hash parameters, and reused by every routing pass and fail-over.
"""

from __future__ import annotations

import itertools
import secrets
from dataclasses import dataclass

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.router.errors import bad_request, model_not_found
from mainsail.router.scheduling import RequestInfo
from mainsail.router.settings import RouterConfig
from mainsail.spec.kvhash import chain_hashes
from mainsail.spec.tokenizer import Tokenizer


@dataclass(frozen=True)
class Prepared:
    """A validated request: token ids, sampling and where it may go."""

    request_id: str
    token_ids: list[int]
    sampling: pb.SamplingParams
    adapter: str
    priority: int
    ttft_target_s: float
    info: RequestInfo


class RequestPreparer:
    """Validates, tokenizes and hashes requests for one model and its adapters."""

    def __init__(self, config: RouterConfig, tokenizer: Tokenizer) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self._slo = {c.name: c for c in config.slo.classes}
        # Request ids: a random per-process prefix (unique across router replicas sharing
        # workers) and a counter; a uuid4 per request cost more than the rest of the id work.
        self._id_prefix = f"req-{secrets.token_hex(6)}-"
        self._ids = itertools.count(1)

    def served_models(self) -> list[str]:
        """Model ids clients may name: the base model and `<model>:<adapter>`."""
        base = self.config.model_name
        return [base, *(f"{base}:{a}" for a in self.config.adapters)]

    def prepare(self, request: pb.GenerateRequest) -> Prepared:
        """Check and tokenize ``request``; raises RouterError (4xx) naming what is wrong."""
        adapter = self._resolve_model(request.model, request.adapter)
        token_ids = self._tokens(request)
        sampling = pb.SamplingParams()
        sampling.CopyFrom(request.sampling)
        if sampling.max_tokens < 0:
            raise bad_request("max_tokens must be >= 1.", param="max_tokens")
        if sampling.max_tokens == 0:
            sampling.max_tokens = self.config.default_max_tokens
        limit = self.config.max_model_len
        if len(token_ids) + sampling.max_tokens > limit:
            raise bad_request(
                f"This model's maximum context length is {limit} tokens. However, you "
                f"requested {len(token_ids) + sampling.max_tokens} tokens "
                f"({len(token_ids)} in the prompt, {sampling.max_tokens} in the completion). "
                "Please reduce the prompt or max_tokens.",
                param="max_tokens",
            )
        if request.slo_class and request.slo_class not in self._slo:
            known = ", ".join(sorted(self._slo)) or "none"
            raise bad_request(
                f"Unknown SLO class `{request.slo_class}` (known: {known}).", param="slo_class"
            )
        slo = self._slo.get(request.slo_class)
        priority = max(request.priority, slo.priority if slo else 0)
        ttft_ms = (slo.ttft_ms if slo and slo.ttft_ms else None) or self.config.slo.ttft_ms
        request_id = request.request_id or f"{self._id_prefix}{next(self._ids):x}"
        kv = self.config.kv_hash
        hashes = chain_hashes(token_ids, kv.block_size, kv.hash_seed, adapter or None)
        info = RequestInfo(
            request_id=request_id,
            block_hashes=tuple(hashes),
            prompt_tokens=len(token_ids),
            max_tokens=sampling.max_tokens,
            adapter=adapter or None,
            role=self.config.request_role,
            slo_class=request.slo_class or None,
            priority=priority,
        )
        return Prepared(request_id, token_ids, sampling, adapter, priority, ttft_ms / 1000, info)

    def _resolve_model(self, model: str, adapter: str) -> str:
        base = self.config.model_name
        name, _, suffix = model.partition(":")
        if name != base:
            raise model_not_found(model)
        chosen = adapter or suffix
        if chosen and chosen not in self.config.adapters:
            raise model_not_found(f"{base}:{chosen}")
        return chosen

    def _tokens(self, request: pb.GenerateRequest) -> list[int]:
        given = [bool(request.prompt), bool(request.prompt_token_ids), bool(request.messages)]
        if sum(given) != 1:
            raise bad_request(
                "Give exactly one of prompt, prompt_token_ids or messages.", param="prompt"
            )
        try:
            if request.messages:
                messages = [{"role": m.role, "content": m.content} for m in request.messages]
                token_ids = self.tokenizer.apply_chat_template(messages)
            elif request.prompt:
                token_ids = self.tokenizer.encode(request.prompt)
            else:
                token_ids = self._given_ids(request)
        except ValueError as exc:
            # The chat template refused the conversation (for example a role it rejects).
            raise bad_request(
                f"The prompt could not be formatted: {exc}", param="messages"
            ) from None
        if not token_ids:
            raise bad_request("The prompt is empty after tokenization.", param="prompt")
        return token_ids

    def _given_ids(self, request: pb.GenerateRequest) -> list[int]:
        token_ids = list(request.prompt_token_ids)
        vocab = self.tokenizer.vocab_size
        bad = [t for t in token_ids if not 0 <= t < vocab]
        if bad:
            raise bad_request(f"Token ids must be in [0, {vocab}); got {bad[:5]}.", param="prompt")
        return token_ids
