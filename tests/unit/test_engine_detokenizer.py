"""Incremental detokenization: deltas add up to the full text; stop strings never leak."""

from __future__ import annotations

from pathlib import Path

import pytest

from mainsail.workers.engine import Tokenizer
from mainsail.workers.engine.detokenizer import Detokenizer


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Tokenizer:
    return Tokenizer(tiny_model_dir)


def _stream(tok: Tokenizer, text: str, stop: tuple[str, ...] = ()) -> tuple[list[str], Detokenizer]:
    prompt = tok.encode("Prompt:")
    detok = Detokenizer(tok.decode, prompt, stop)
    deltas = []
    for t in tok.encode(text):
        detok.add(t)
        deltas.append(detok.take(final=False))
        if detok.stopped:
            break
    deltas.append(detok.take(final=True))
    return deltas, detok


@pytest.mark.unit
@pytest.mark.parametrize(
    "text", ["The sailor checked the ropes.", "naïve café — 風 🚢 ok", "x" * 60]
)
def test_deltas_concatenate_to_the_decoded_text(tokenizer: Tokenizer, text: str) -> None:
    deltas, _ = _stream(tokenizer, text)
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas)


@pytest.mark.unit
def test_stop_string_is_cut_and_never_emitted(tokenizer: Tokenizer) -> None:
    deltas, detok = _stream(tokenizer, "The wind came from the west at noon.", stop=("west",))
    assert detok.stopped
    assert "".join(deltas) == "The wind came from the "


@pytest.mark.unit
def test_possible_stop_prefix_is_held_back_then_released(tokenizer: Tokenizer) -> None:
    prompt = tokenizer.encode("Q:")
    detok = Detokenizer(tokenizer.decode, prompt, stop=("ABCD",))
    emitted = ""
    for t in tokenizer.encode("xxAB"):
        detok.add(t)
        emitted += detok.take(final=False)
    assert emitted == "xx"
    for t in tokenizer.encode("Z"):
        detok.add(t)
        emitted += detok.take(final=False)
    assert emitted == "xxABZ" and not detok.stopped
