"""Files that hold input text (patient text, in clinical use): created readable by their owner only (0600)."""

from __future__ import annotations

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
