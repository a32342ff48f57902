"""Grounding: mention strings (no offsets) -> character spans in the text. Pure functions.

The rule: exact, case-sensitive string match. Mentions are placed left to right: each is searched
from the end of the previous match; if it does not occur there, the first occurrence not yet used
is taken. Only occurrences that start and end on token boundaries count, so ``WFS`` is never found
inside ``WFS1``. A mention with no such occurrence is dropped and reported, never guessed.

Raw input (no gold tokens) is tokenized by :func:`simple_token_offsets`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

_EN_TOKEN = re.compile(r"\w+|[^\w\s]")


def simple_token_offsets(text: str, lang: str) -> list[tuple[int, int]]:
    """Token boundaries for raw text: words and single punctuation marks (en); characters (zh)."""
    if lang == "zh":
        return [(i, i + 1) for i, ch in enumerate(text) if not ch.isspace()]
    return [m.span() for m in _EN_TOKEN.finditer(text)]


def _occurrences(text: str, needle: str, starts: set[int], ends: set[int]) -> list[int]:
    out, i = [], text.find(needle)
    while i >= 0:
        if i in starts and i + len(needle) in ends:
            out.append(i)
        i = text.find(needle, i + 1)
    return out


def ground_mentions(text: str, mentions: Iterable[dict], token_offsets: Sequence[Sequence[int]]) -> tuple[list[dict], list[dict]]:
    """Place each ``{"text", "type"}`` mention. Returns (grounded entities with start/end, dropped
    mentions each with a ``reason``)."""
    starts = {int(s) for s, _ in token_offsets}
    ends = {int(e) for _, e in token_offsets}
    used: set[tuple[int, int]] = set()
    cursor = 0
    grounded, dropped = [], []
    for m in mentions:
        needle = m.get("text", "")
        if not needle:
            dropped.append({**m, "reason": "empty mention"})
            continue
        occ = _occurrences(text, needle, starts, ends)
        free = [i for i in occ if (i, i + len(needle)) not in used]
        pick = next((i for i in free if i >= cursor), free[0] if free else None)
        if pick is None:
            if not occ and needle in text:
                reason = "not on token boundaries"
            elif occ:
                reason = "more mentions than occurrences in the text"
            else:
                reason = "not found in the text"
            dropped.append({**m, "reason": reason})
            continue
        used.add((pick, pick + len(needle)))
        cursor = pick + len(needle)
        grounded.append({"text": needle, "type": m.get("type"), "start": pick, "end": pick + len(needle)})
    return grounded, dropped
