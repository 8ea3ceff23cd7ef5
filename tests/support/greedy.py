"""The greedy request the cluster tests compare across realizations, as the `openai` SDK
sends it: the same prompt whole and streamed, so both paths of the router are checked."""

from __future__ import annotations

from typing import Any


def ask_greedy(
    base_url: str, api_key: str, model: str, prompt: str, max_tokens: int
) -> tuple[str, str, int]:
    """(non-streamed text, streamed text joined, completion tokens) of one greedy completion
    that ignores EOS, so every realization generates exactly `max_tokens` tokens."""
    import openai

    client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=120)
    kwargs: dict[str, Any] = {
        "model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
        "extra_body": {"ignore_eos": True},
    }  # fmt: skip
    whole = client.completions.create(**kwargs)
    parts = list(client.completions.create(stream=True, **kwargs))
    streamed = "".join(p.choices[0].text for p in parts if p.choices)
    assert whole.usage is not None
    return whole.choices[0].text, streamed, whole.usage.completion_tokens
