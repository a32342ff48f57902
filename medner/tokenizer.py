"""The Qwen2.5 tokenizer vendored in ``medner/assets`` (official vocabulary and chat template)."""

from __future__ import annotations

import functools
import threading
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


class LockedTokenizer:
    """A tokenizer shared by threads: Hugging Face fast tokenizers refuse concurrent use from several threads
    ("Already borrowed"), and request planning runs in worker threads. Counting and chat templates go through one
    lock; anything else is passed through."""

    def __init__(self, tok) -> None:
        self._tok = tok
        self._lock = threading.Lock()

    def __call__(self, *args, **kwargs):
        with self._lock:
            return self._tok(*args, **kwargs)

    def apply_chat_template(self, *args, **kwargs):
        with self._lock:
            return self._tok.apply_chat_template(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._tok, name)


_SHARED: dict[str | None, LockedTokenizer] = {}
_SHARED_LOCK = threading.Lock()


def locked_tokenizer(path: str | None = None) -> LockedTokenizer:
    """The one shared tokenizer of ``path`` (default: the vendored one), safe to use from several threads; made
    once even when several threads ask for it first at the same time (two wrappers would mean two locks)."""
    with _SHARED_LOCK:
        if path not in _SHARED:
            _SHARED[path] = LockedTokenizer(load_tokenizer(path))
        return _SHARED[path]
