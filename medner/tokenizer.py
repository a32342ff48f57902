"""The Qwen2.5 tokenizer vendored in ``medner/assets`` (official vocabulary and chat template)."""

from __future__ import annotations

import functools
from pathlib import Path

VENDORED_TOKENIZER = Path(__file__).parent / "assets" / "qwen2.5-tokenizer"


@functools.lru_cache(maxsize=4)
def load_tokenizer(path: str | None = None):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path or VENDORED_TOKENIZER))


def token_counter(path: str | None = None):
    """A function text -> number of Qwen2.5 tokens (no special tokens)."""
    tok = load_tokenizer(path)
    return lambda text: len(tok(text, add_special_tokens=False)["input_ids"])
