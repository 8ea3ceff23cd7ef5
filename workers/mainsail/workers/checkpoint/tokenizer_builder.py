"""Builds the tiny checkpoints' tokenizer: a byte-level BPE trained on the built-in corpus.

Why byte-level BPE: any UTF-8 text encodes without unknown tokens, so engine tests can feed
arbitrary prompts, and `transformers.AutoTokenizer` loads the result from `tokenizer.json` with
no network. Training is deterministic for a fixed corpus and vocabulary size.
"""

from __future__ import annotations

from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from mainsail.workers.checkpoint.corpus import CORPUS

BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
PAD_TOKEN = "<pad>"
SPECIAL_TOKENS = (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN)

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def build_tokenizer(vocab_size: int) -> Tokenizer:
    """Train a byte-level BPE of exactly ``vocab_size`` entries (special tokens included)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(CORPUS) * 4, trainer=trainer)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    if tok.get_vocab_size() != vocab_size:
        raise ValueError(
            f"tokenizer corpus too small: got {tok.get_vocab_size()} tokens, wanted {vocab_size}"
        )
    return tok


def tokenizer_config(model_max_length: int) -> dict[str, Any]:
    """The `tokenizer_config.json` that `AutoTokenizer` reads next to `tokenizer.json`."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "pad_token": PAD_TOKEN,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
        "chat_template": CHAT_TEMPLATE,
    }
