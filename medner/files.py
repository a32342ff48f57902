"""File helpers: files that hold input text (patient text, in clinical use) created readable by their owner only
(0600), and the sha256 of a file."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import IO


def open_private(path: str | Path, mode: str = "w") -> IO[str]:
    """``open(path, mode, encoding="utf-8")`` for writing or appending, the file created with mode 0600 (an
    existing file is narrowed to 0600 too)."""
    if mode not in ("w", "a"):
        raise ValueError(f"open_private writes text: mode 'w' or 'a', not {mode!r}")
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if mode == "w" else os.O_APPEND)
    fd = os.open(path, flags, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, mode, encoding="utf-8")


def sha256_of(path: str | Path) -> str:
    """The sha256 of a file's bytes, read in 4 MiB pieces."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()
