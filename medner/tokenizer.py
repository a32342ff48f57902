"""The Qwen2.5 tokenizer vendored in ``medner/assets`` (official vocabulary and chat template)."""

from __future__ import annotations

import functools
import json
import threading
from pathlib import Path

VENDORED_TOKENIZER = Path(__file__).parent / "assets" / "qwen2.5-tokenizer"


def _declared_class(folder: Path) -> str | None:
    try:
        return json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8")).get("tokenizer_class")
    except (OSError, ValueError):
        return None


@functools.lru_cache(maxsize=4)
def load_tokenizer(path: str | None = None):
    folder = Path(path or VENDORED_TOKENIZER)
    # transformers is heavy, imported here only. A Qwen2 tokenizer is loaded through its own class: the same
    # object AutoTokenizer returns, without AutoTokenizer's import of torch (a CLI call's start, 4.5 s -> 1.6 s here)
    if folder.is_dir() and _declared_class(folder) in ("Qwen2Tokenizer", "Qwen2TokenizerFast"):
        from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

        return Qwen2Tokenizer.from_pretrained(str(folder))
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


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
