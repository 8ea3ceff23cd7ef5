"""The tokenizer every party shares: router (to hash prompts into KV blocks) and workers.

Why here: block ids are hashes of token ids, so the router and the engine must tokenize a
prompt identically, from the same `tokenizer.json` and chat template. Both load it through this
class from the checkpoint directory the deployment names; nobody re-implements it (the engine's
`mainsail.workers.engine.Tokenizer` is a thin subclass that only maps errors to its own types).

The chat template is rendered in a Jinja sandbox as `transformers` does (``trim_blocks``,
``lstrip_blocks``, ``raise_exception``), so `transformers`' own `apply_chat_template` gives the
same text. A checkpoint without a template gets a plain ``role: content`` rendering.
Every error is a `TokenizerError` (a `ValueError`).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import jinja2
import jinja2.sandbox
from tokenizers import Tokenizer as _HFTokenizer


class TokenizerError(ValueError):
    """The tokenizer files are missing or unusable."""


class ChatTemplateError(TokenizerError):
    """Chat messages the template cannot render (bad shape, or the template refused them)."""


class Tokenizer:
    """Encode, decode and chat-template rendering over a Hugging Face `tokenizer.json`.

    ``eos_token_ids``: extra end-of-sequence ids (e.g. from the model's `config.json` and
    `generation_config.json`); the tokenizer's own ``eos_token`` is always included.
    ``vocab_size``: the model's vocabulary size when it differs from the tokenizer's (padded
    embedding tables); token ids are valid in ``[0, vocab_size)``.
    Thread-safe for concurrent encode/decode/render.
    """

    def __init__(
        self,
        model_dir: Path,
        eos_token_ids: Sequence[int] = (),
        vocab_size: int | None = None,
    ) -> None:
        model_dir = Path(model_dir)
        path = model_dir / "tokenizer.json"
        if not path.is_file():
            raise TokenizerError(f"tokenizer: {path} does not exist")
        if vocab_size is not None and vocab_size < 1:
            raise TokenizerError(f"tokenizer: vocab_size must be >= 1, got {vocab_size}")
        self._tok = _HFTokenizer.from_file(str(path))
        config: dict[str, Any] = {}
        config_path = model_dir / "tokenizer_config.json"
        if config_path.is_file():
            config = json.loads(config_path.read_text())
        self.bos_token: str | None = _token_text(config.get("bos_token"))
        self.eos_token: str | None = _token_text(config.get("eos_token"))
        own_eos = self._tok.token_to_id(self.eos_token) if self.eos_token else None
        self.bos_token_id: int | None = (
            self._tok.token_to_id(self.bos_token) if self.bos_token else None
        )
        eos = set(eos_token_ids) | ({own_eos} if own_eos is not None else set())
        self.eos_token_ids: tuple[int, ...] = tuple(sorted(eos))
        self.eos_token_id: int | None = own_eos
        if own_eos is None and self.eos_token_ids:
            self.eos_token_id = self.eos_token_ids[0]
        self._vocab_size = vocab_size
        template = config.get("chat_template")
        if isinstance(template, list):  # named templates: [{"name": ..., "template": ...}]
            template = {t.get("name"): t.get("template") for t in template}.get("default")
        self.chat_template: str | None = template if isinstance(template, str) else None
        env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise_template_error
        try:
            self._template = env.from_string(self.chat_template) if self.chat_template else None
        except jinja2.TemplateError as exc:
            raise TokenizerError(f"tokenizer: chat template does not parse: {exc}") from exc

    @property
    def vocab_size(self) -> int:
        """Size of the vocabulary including special tokens (or the model's, when given)."""
        if self._vocab_size is not None:
            return self._vocab_size
        return int(self._tok.get_vocab_size(with_added_tokens=True))

    @functools.cached_property
    def max_token_chars(self) -> int:
        """The most characters one token stands for (the longest vocabulary entry): a text
        of ``n`` characters has at least ``n / max_token_chars`` tokens, known without
        tokenizing it (how the router refuses an oversized prompt for free)."""
        return max(1, *(len(piece) for piece in self._tok.get_vocab(with_added_tokens=True)))

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text`` (the tokenizer's special tokens added, as HF ``__call__``).

        A long text goes through the batch call, which releases the GIL while the Rust
        tokenizer works (the single-text call holds it: seconds for megabytes, during which
        no other thread of the process — the router's event loop — runs)."""
        if len(text) > _GIL_RELEASE_CHARS:
            batch = self._tok.encode_batch([text], add_special_tokens=add_special_tokens)
            return list(batch[0].ids)
        return list(self._tok.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of ``token_ids``."""
        return str(self._tok.decode(list(token_ids), skip_special_tokens=skip_special_tokens))

    def render_chat(
        self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = True
    ) -> str:
        """The prompt text for ``messages`` (with the generation prompt appended by default)."""
        for m in messages:
            if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
                raise ChatTemplateError("chat messages need 'role' and 'content'")
        if self._template is None:
            lines = [f"{m['role']}: {m['content']}" for m in messages]
            return "\n".join([*lines, "assistant:"] if add_generation_prompt else lines)
        try:
            return str(
                self._template.render(
                    messages=[dict(m) for m in messages],
                    add_generation_prompt=add_generation_prompt,
                    bos_token=self.bos_token or "",
                    eos_token=self.eos_token or "",
                )
            )
        except jinja2.TemplateError as exc:
            raise ChatTemplateError(f"chat template failed: {exc}") from exc

    def apply_chat_template(
        self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = True
    ) -> list[int]:
        """Token ids of the rendered chat prompt (special tokens come from the template)."""
        return self.encode(
            self.render_chat(messages, add_generation_prompt), add_special_tokens=False
        )


_GIL_RELEASE_CHARS = 4096


def _raise_template_error(message: str) -> NoReturn:
    raise jinja2.TemplateError(message)


def _token_text(value: object) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None
