"""OpenAI-compatible request bodies, validated at the edge.

Unknown fields are accepted and ignored (SDKs send fields such as `user` that do not change
generation); fields we cannot honour (`n > 1`, `echo`, `best_of`) are refused with a 400 that
names them, rather than silently producing something else.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mainsail.router.errors import RouterError, bad_request
from mainsail.spec.request_contract import (
    INT32_MAX,
    MAX_LOGPROBS,
    MAX_MESSAGES,
    MAX_TOKENS_LIMIT,
    PRIORITY_MAX,
    SEED_MAX,
    TOP_K_MAX,
)

# Bounds come from the shared request contract, so no JSON number can overflow a proto field
# (a 500) or reach a worker that would refuse it.


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Body):
    include_usage: bool = False


class _Sampling(_Body):
    model: str = Field(..., min_length=1)
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)
    temperature: float | None = Field(None, ge=0, le=2, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)
    top_k: int | None = Field(None, ge=-1, le=TOP_K_MAX)
    n: int = Field(1, ge=1, le=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, le=SEED_MAX)
    presence_penalty: float | None = Field(None, ge=-2, le=2, allow_inf_nan=False)
    frequency_penalty: float | None = Field(None, ge=-2, le=2, allow_inf_nan=False)
    ignore_eos: bool = False
    # Mainsail extensions.
    priority: int = Field(0, ge=0, le=PRIORITY_MAX)
    slo_class: str | None = None
    adapter: str | None = None
    ttft_ms: float | None = Field(None, gt=0, allow_inf_nan=False)
    tpot_ms: float | None = Field(None, gt=0, allow_inf_nan=False)

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else (value or [])
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences are allowed")
        if any(not s for s in stops):
            raise ValueError("stop sequences must not be empty")
        return value

    def stop_list(self) -> list[str]:
        """Stop strings as a list."""
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class CompletionRequest(_Sampling):
    """Body of POST /v1/completions."""

    prompt: (
        Annotated[str, Field(min_length=1)]
        | list[Annotated[int, Field(ge=0, le=INT32_MAX)]]
        | list[str]
    )
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: Literal[False] = False
    best_of: int | None = Field(None, ge=1, le=1)
    suffix: None = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[int] | list[str]) -> str | list[int] | list[str]:
        if isinstance(value, list):
            if not value:
                raise ValueError("prompt must not be empty")
            if isinstance(value[0], str):
                if len(value) != 1:
                    raise ValueError("only one prompt per request is supported")
                if not value[0]:
                    raise ValueError("prompt must not be empty")
        return value


class TextPart(_Body):
    type: Literal["text"]
    text: str


class ChatMessageBody(_Body):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        """The message's text, parts joined."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(_Sampling):
    """Body of POST /v1/chat/completions."""

    messages: list[ChatMessageBody] = Field(..., min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)

    @field_validator("messages")
    @classmethod
    def _not_blank(cls, value: list[ChatMessageBody]) -> list[ChatMessageBody]:
        if all(not m.text().strip() for m in value):
            raise ValueError("messages must contain some text")
        return value


T = TypeVar("T", bound=BaseModel)


def parse_body(model: type[T], payload: Any) -> T:
    """Validate ``payload`` or raise a 400 that names the first offending field."""
    if not isinstance(payload, dict):
        raise bad_request("The request body must be a JSON object.")
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise _to_router_error(exc) from None


def _to_router_error(exc: ValidationError) -> RouterError:
    first = exc.errors()[0]
    loc = [str(p) for p in first["loc"] if not str(p).startswith(("function-", "constrained-"))]
    # Union branches add their type names to the location; keep the field path only.
    loc = [p for p in loc if p not in {"str", "list[int]", "list[str]", "int", "function-after"}]
    param = ".".join(loc) or None
    message = first["msg"]
    if first["type"] == "missing":
        message = f"Missing required parameter: '{param}'."
    elif param:
        message = f"Invalid value for '{param}': {message}."
    return bad_request(message, param=param)
