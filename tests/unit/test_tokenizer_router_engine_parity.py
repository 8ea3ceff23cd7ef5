"""Router and engine tokenize identically: same ids for plain prompts and chat prompts.

KV block ids are hashes of token ids, so any difference would silently break KV-aware
routing. The router loads `mainsail.spec.tokenizer.Tokenizer`; the engine builds its
subclass with the model's EOS ids and vocabulary (as `Engine.__init__` does).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mainsail.spec.tokenizer import ChatTemplateError, TokenizerError
from mainsail.spec.tokenizer import Tokenizer as RouterTokenizer
from mainsail.workers.engine import EngineInputError
from mainsail.workers.engine import Tokenizer as EngineTokenizer
from mainsail.workers.models import CheckpointError
from mainsail.workers.models.config import load_model_config

pytestmark = pytest.mark.unit

PROMPTS = [
    "",
    "Hello, sailor!",
    "The captain wrote in the log: wind NNE, 12 knots.",
    "  leading and trailing spaces  ",
    "line one\nline two\r\n\ttabbed",
    "ünïcödé — ☃ 漢字 🙂",
    "<s> looks special </s> but is typed",
    "a" * 500,
]
CHATS = [
    [{"role": "user", "content": "hi"}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Where is the wind from?"},
        {"role": "assistant", "content": "North."},
        {"role": "user", "content": "And tomorrow? 🙂"},
    ],
    [{"role": "user", "content": ""}],
]


@pytest.fixture(scope="module")
def pair(tiny_model_dir: Path) -> tuple[RouterTokenizer, EngineTokenizer]:
    cfg = load_model_config(tiny_model_dir)
    engine_side = EngineTokenizer(tiny_model_dir, cfg.eos_token_ids, cfg.vocab_size)
    return RouterTokenizer(tiny_model_dir), engine_side


def test_engine_tokenizer_is_the_shared_one() -> None:
    assert issubclass(EngineTokenizer, RouterTokenizer)


@pytest.mark.parametrize("text", PROMPTS)
def test_plain_prompts_give_identical_ids(
    pair: tuple[RouterTokenizer, EngineTokenizer], text: str
) -> None:
    router, engine = pair
    ids = router.encode(text)
    assert ids == engine.encode(text)
    assert router.decode(ids) == engine.decode(ids)


@pytest.mark.parametrize("messages", CHATS)
def test_chat_prompts_give_identical_ids(
    pair: tuple[RouterTokenizer, EngineTokenizer], messages: list[dict[str, str]]
) -> None:
    router, engine = pair
    assert router.render_chat(messages) == engine.render_chat(messages)
    ids = router.apply_chat_template(messages)
    assert ids and ids == engine.apply_chat_template(messages)
    assert ids[0] == router.bos_token_id == engine.bos_token_id


@settings(max_examples=25, deadline=None)
@given(text=st.text(max_size=80), role=st.sampled_from(["user", "system", "assistant"]))
def test_any_text_gives_identical_ids(
    pair: tuple[RouterTokenizer, EngineTokenizer], text: str, role: str
) -> None:
    router, engine = pair
    assert router.encode(text) == engine.encode(text)
    chat = [{"role": role, "content": text}]
    assert router.apply_chat_template(chat) == engine.apply_chat_template(chat)


def test_special_ids_and_vocab_agree(pair: tuple[RouterTokenizer, EngineTokenizer]) -> None:
    router, engine = pair
    assert router.eos_token_id == engine.eos_token_id is not None
    assert router.eos_token_id in engine.eos_token_ids
    assert router.vocab_size == engine.vocab_size == 512


def test_errors_are_value_errors_on_both_sides(
    pair: tuple[RouterTokenizer, EngineTokenizer], tmp_path: Path
) -> None:
    router, engine = pair
    bad = [{"content": "no role"}]
    with pytest.raises(ChatTemplateError):
        router.apply_chat_template(bad)
    with pytest.raises(EngineInputError):
        engine.apply_chat_template(bad)
    with pytest.raises(TokenizerError, match="does not exist"):
        RouterTokenizer(tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        EngineTokenizer(tmp_path)
