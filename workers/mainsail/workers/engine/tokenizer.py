"""The engine's tokenizer: the shared `mainsail.spec.tokenizer.Tokenizer`, engine errors.

Why a subclass and not a copy: KV block ids are hashes of token ids, so the router and the
engine must tokenize and chat-template a prompt identically; both use one implementation.
This class only maps the contract's errors onto the engine's own types: a missing or broken
tokenizer file is a `CheckpointError`, a chat the template cannot render an `EngineInputError`
(both `ValueError`s, as the contract's `TokenizerError` is).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from mainsail.spec.tokenizer import ChatTemplateError, TokenizerError
from mainsail.spec.tokenizer import Tokenizer as SharedTokenizer
from mainsail.workers.engine.errors import EngineInputError
from mainsail.workers.models.errors import CheckpointError


class Tokenizer(SharedTokenizer):
    """The checkpoint's tokenizer with the model's EOS ids and vocabulary size."""

    def __init__(
        self, model_dir: Path, eos_token_ids: Sequence[int] = (), vocab_size: int | None = None
    ) -> None:
        try:
            super().__init__(model_dir, eos_token_ids, vocab_size)
        except TokenizerError as exc:
            raise CheckpointError(str(exc)) from exc

    def render_chat(
        self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = True
    ) -> str:
        """The prompt text for ``messages``; `EngineInputError` when they cannot be rendered."""
        try:
            return super().render_chat(messages, add_generation_prompt)
        except ChatTemplateError as exc:
            raise EngineInputError(str(exc)) from exc
