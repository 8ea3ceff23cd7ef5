"""The tokenizer every party shares: router (to hash prompts into KV blocks) and workers.

Why here: block ids are hashes of token ids, so the router and the engine must tokenize a
prompt identically, from the same `tokenizer.json` and chat template. Both load it through this
class from the checkpoint directory the deployment names; nobody re-implements it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2
import jinja2.sandbox
from tokenizers import Tokenizer as _HFTokenizer


class Tokenizer:
    """Encode, decode and chat-template rendering over a Hugging Face `tokenizer.json`."""

    def __init__(self, model_dir: Path) -> None:
        model_dir = Path(model_dir)
        path = model_dir / "tokenizer.json"
        if not path.is_file():
            raise ValueError(f"tokenizer: {path} does not exist")
        self._tok = _HFTokenizer.from_file(str(path))
        config: dict[str, Any] = {}
        config_path = model_dir / "tokenizer_config.json"
        if config_path.is_file():
            config = json.loads(config_path.read_text())
        self.bos_token: str | None = _token_text(config.get("bos_token"))
        self.eos_token: str | None = _token_text(config.get("eos_token"))
        self.eos_token_id: int | None = (
            self._tok.token_to_id(self.eos_token) if self.eos_token else None
        )
        self.bos_token_id: int | None = (
            self._tok.token_to_id(self.bos_token) if self.bos_token else None
        )
        template = config.get("chat_template")
        env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        self._template = env.from_string(template) if isinstance(template, str) else None

    @property
    def vocab_size(self) -> int:
        """Size of the vocabulary including special tokens."""
        return int(self._tok.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``."""
        return list(self._tok.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of ``token_ids``."""
        return str(self._tok.decode(list(token_ids), skip_special_tokens=skip_special_tokens))

    def render_chat(self, messages: Sequence[Mapping[str, str]]) -> str:
        """The prompt text for ``messages`` with the generation prompt appended."""
        if self._template is None:
            lines = [f"{m['role']}: {m['content']}" for m in messages]
            return "\n".join([*lines, "assistant:"])
        return str(
            self._template.render(
                messages=list(messages),
                add_generation_prompt=True,
                bos_token=self.bos_token or "",
                eos_token=self.eos_token or "",
            )
        )

    def apply_chat_template(self, messages: Sequence[Mapping[str, str]]) -> list[int]:
        """Token ids of the rendered chat prompt (special tokens come from the template)."""
        return self.encode(self.render_chat(messages), add_special_tokens=False)


def _token_text(value: object) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None
