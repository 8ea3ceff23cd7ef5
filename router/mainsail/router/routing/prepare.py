"""Turning a client's request into what the router schedules: checked, tokenized, hashed.

Why apart from dispatch: everything here is a pure function of the request and the router's
configuration (no workers, no I/O), and every refusal is a 4xx that names the bad field, so it
is tested table-driven without a transport. The prompt's block hashes are computed once here,
with the deployment's KV hash parameters, and reused by every routing pass and fail-over.

The bounds are the shared request contract (`mainsail.spec.request_contract`) that workers
enforce too, so nothing a worker would refuse gets past here. Request ids are the router's:
random and unguessable, so one client can neither predict nor collide with another's id
(which would end that client's stream); a client's own id is kept only as a label. The
tenant's cache namespace is mixed into the block hashes like the adapter.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.router.errors import bad_request, model_not_found
from mainsail.router.scheduling import RequestInfo
from mainsail.router.settings import RouterConfig
from mainsail.router.tracing import NO_TRACE, RequestTrace
from mainsail.spec.kvhash import chain_hashes, hash_key
from mainsail.spec.request_contract import (
    PRIORITY_MAX,
    FieldError,
    check_context,
    check_label,
    check_prompt_ids,
    check_sampling,
)
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
    client_label: str = ""  # the client's own request id, if it sent one: a label only
    cache_namespace: str = ""  # the tenant's prefix-cache namespace ("" = shared)
    tpot_target_s: float = 0.0  # time-per-output-token target (0: none)
    flow: str = ""  # fair-queuing key: the tenant, else the client's fairness id
    trace: RequestTrace = field(default=NO_TRACE, compare=False, repr=False)  # its spans


def new_request_id() -> str:
    """A fresh request id: 120 random bits (unguessable, unique across router replicas)."""
    return "req-" + secrets.token_urlsafe(15)


class RequestPreparer:
    """Validates, tokenizes and hashes requests for one model and its adapters."""

    def __init__(self, config: RouterConfig, tokenizer: Tokenizer) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self._slo = {c.name: c for c in config.slo.classes}

    def served_models(self) -> list[str]:
        """Model ids clients may name: the base model and `<model>:<adapter>`."""
        base = self.config.model_name
        return [base, *(f"{base}:{a}" for a in self.config.adapters)]

    def prepare(self, request: pb.GenerateRequest, tenant: str = "") -> Prepared:
        """Check and tokenize ``request``; raises RouterError (4xx) naming what is wrong."""
        try:
            return self._prepare(request, tenant)
        except FieldError as exc:
            raise bad_request(exc.message, param=exc.param) from None

    def check(self, request: pb.GenerateRequest) -> None:
        """The checks that need no tokenizer (cheap: run before queueing the tokenization)."""
        try:
            self._check_fields(request)
        except FieldError as exc:
            raise bad_request(exc.message, param=exc.param) from None

    def _check_fields(self, request: pb.GenerateRequest) -> None:
        check_label("request_id", request.request_id)
        check_label("slo_class", request.slo_class)
        check_label("adapter", request.adapter)
        check_label("fairness_id", request.fairness_id)
        bounds = self.config.slo.request_bounds
        _check_target("ttft_ms", request.ttft_ms, bounds.min_ttft_ms, bounds.max_ttft_ms)
        _check_target("tpot_ms", request.tpot_ms, bounds.min_tpot_ms, bounds.max_tpot_ms)
        if len(request.model) > 256:
            raise FieldError("model", "model must be at most 256 characters.")
        if not 0 <= request.priority <= PRIORITY_MAX:
            raise FieldError("priority", f"priority must be in [0, {PRIORITY_MAX}].")
        check_sampling(request.sampling, vocab_size=self.tokenizer.vocab_size)

    def _prepare(self, request: pb.GenerateRequest, tenant: str) -> Prepared:
        self._check_fields(request)
        adapter = self._resolve_model(request.model, request.adapter)
        token_ids = self._tokens(request)
        sampling = pb.SamplingParams()
        sampling.CopyFrom(request.sampling)
        if sampling.max_tokens == 0:
            sampling.max_tokens = self.config.default_max_tokens
        check_context(len(token_ids), sampling.max_tokens, self.config.max_model_len)
        if request.slo_class and request.slo_class not in self._slo:
            known = ", ".join(sorted(self._slo)) or "none"
            raise bad_request(
                f"Unknown SLO class `{request.slo_class}` (known: {known}).", param="slo_class"
            )
        slo = self._slo.get(request.slo_class)
        # A class sets the band (negative: sheddable); a request's own priority may raise it,
        # up to what the deployment allows (`slo.requestBounds.maxPriority`).
        priority = min(request.priority, self.config.slo.request_bounds.max_priority)
        if slo is not None:
            priority = max(priority, slo.priority) if priority else slo.priority
        ttft_ms = (
            request.ttft_ms
            or (slo.ttft_ms if slo and slo.ttft_ms else None)
            or self.config.slo.ttft_ms
        )
        tpot_ms = (
            request.tpot_ms
            or (slo.tpot_ms if slo and slo.tpot_ms else None)
            or self.config.slo.tpot_ms
        )
        request_id = new_request_id()
        kv = self.config.kv_hash
        hashes = chain_hashes(token_ids, kv.block_size, kv.hash_seed, hash_key(adapter, tenant))
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
        return Prepared(
            request_id,
            token_ids,
            sampling,
            adapter,
            priority,
            ttft_ms / 1000,
            info,
            client_label=request.request_id,
            cache_namespace=tenant,
            tpot_target_s=tpot_ms / 1000,
            flow=tenant or (f"f:{request.fairness_id}" if request.fairness_id else ""),
        )

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
        self._bound_text(request)
        try:
            if request.messages:
                messages = [{"role": m.role, "content": m.content} for m in request.messages]
                token_ids = self.tokenizer.apply_chat_template(messages)
            elif request.prompt:
                token_ids = self.tokenizer.encode(request.prompt)
            else:
                token_ids = self._given_ids(request)
        except FieldError:
            raise
        except ValueError as exc:
            # The chat template refused the conversation (for example a role it rejects).
            raise bad_request(
                f"The prompt could not be formatted: {exc}", param="messages"
            ) from None
        if not token_ids:
            raise bad_request("The prompt is empty after tokenization.", param="prompt")
        return token_ids

    def _bound_text(self, request: pb.GenerateRequest) -> None:
        """Refuse, without tokenizing, a text too long to fit the context in any case."""
        chars = len(request.prompt) + sum(len(m.content) for m in request.messages)
        at_least = chars // self.tokenizer.max_token_chars
        if at_least > self.config.max_model_len:
            raise FieldError(
                "messages" if request.messages else "prompt",
                f"This model's maximum context length is {self.config.max_model_len} "
                f"tokens; the prompt has {chars} characters, at least {at_least} tokens.",
            )

    def _given_ids(self, request: pb.GenerateRequest) -> list[int]:
        token_ids = list(request.prompt_token_ids)
        check_prompt_ids(token_ids, self.tokenizer.vocab_size)
        return token_ids


def _check_target(param: str, value: float, low: float, high: float) -> None:
    """A request's own latency target (ms; 0 = not set) within the deployment's bounds."""
    if value == 0:
        return
    if not math.isfinite(value) or not low <= value <= high:
        raise FieldError(
            param,
            f"{param} must be in [{low:g}, {high:g}] milliseconds (this deployment's bounds).",
        )
