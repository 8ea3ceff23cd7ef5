"""`Tokenizer`: text <-> token ids and chat formatting, from a checkpoint's own files.

Reads `tokenizer.json` with the `tokenizers` library and `tokenizer_config.json` for the special
tokens and the Jinja chat template (rendered in a sandbox, as `transformers` does), so a worker
does not need `transformers` to serve. ``encode`` adds the tokenizer's own special tokens
(as `AutoTokenizer.__call__` does); ``decode`` drops them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer as _HFTokenizer

from mainsail.workers.engine.errors import EngineInputError
from mainsail.workers.models.errors import CheckpointError


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):
        content = value.get("content")
        return str(content) if content is not None else None
    return str(value) if value is not None else None


def _raise(message: str) -> None:
    raise TemplateError(message)


class Tokenizer:
    """The checkpoint's tokenizer; thread-safe for concurrent encode/decode."""

    def __init__(
        self, model_dir: Path, eos_token_ids: tuple[int, ...] = (), vocab_size: int | None = None
    ) -> None:
        path = Path(model_dir) / "tokenizer.json"
        if not path.is_file():
            raise CheckpointError(f"no tokenizer.json in {model_dir}")
        self._tok = _HFTokenizer.from_file(str(path))
        cfg_path = Path(model_dir) / "tokenizer_config.json"
        cfg: dict[str, Any] = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
        self.bos_token = _token_text(cfg.get("bos_token"))
        self.eos_token = _token_text(cfg.get("eos_token"))
        eos = set(eos_token_ids)
        if (
            self.eos_token is not None
            and (tid := self._tok.token_to_id(self.eos_token)) is not None
        ):
            eos.add(tid)
        self.eos_token_ids: tuple[int, ...] = tuple(sorted(eos))
        self.eos_token_id: int | None = self.eos_token_ids[0] if self.eos_token_ids else None
        self.vocab_size: int = vocab_size or self._tok.get_vocab_size(with_added_tokens=True)
        template = cfg.get("chat_template")
        if isinstance(template, list):
            named = {t.get("name"): t.get("template") for t in template}
            template = named.get("default")
        self.chat_template: str | None = template if isinstance(template, str) else None
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        self._template = env.from_string(self.chat_template) if self.chat_template else None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``."""
        ids: list[int] = self._tok.encode(text, add_special_tokens=add_special_tokens).ids
        return ids

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids`` with special tokens left out."""
        text: str = self._tok.decode(ids, skip_special_tokens=True)
        return text

    def render_chat(
        self, messages: list[dict[str, str]], add_generation_prompt: bool = True
    ) -> str:
        """The prompt text the chat template makes of ``messages``."""
        if self._template is None:
            raise EngineInputError("this model has no chat template")
        for m in messages:
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise EngineInputError("chat messages need 'role' and 'content'")
        try:
            return self._template.render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token or "",
                eos_token=self.eos_token or "",
            )
        except TemplateError as exc:
            raise EngineInputError(f"chat template failed: {exc}") from exc

    def apply_chat_template(
        self, messages: list[dict[str, str]], add_generation_prompt: bool = True
    ) -> list[int]:
        """Token ids of the chat prompt (the template supplies any special tokens)."""
        return self.encode(
            self.render_chat(messages, add_generation_prompt), add_special_tokens=False
        )
