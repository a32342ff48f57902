"""Windowing: long texts are split into pieces that fit a length cap in Qwen2.5 tokens.

Records stay one per source text; windows exist only where prompts are built (training pairs,
extraction requests). Offsets of a window are character offsets into the original text, so results
map back exactly by adding the window start.

The rule
--------
1. Split the text into sentences after sentence-final punctuation (``. ? !`` in English,
   ``。！？；!?;`` in Chinese). On annotated text a boundary inside an entity is not a boundary,
   so no entity is ever cut (a few cMedQANER entities contain 。 or ；).
2. Pack whole sentences greedily into windows of at most ``max_tokens`` tokens.
3. A sentence longer than the cap is cut at token boundaries (never inside an entity).
4. Raw input (no annotation) uses overlapping windows: each window after the first starts with the
   last piece of the previous one, and :func:`merge_window_entities` merges the duplicate mentions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

# the window cap in tokens (Qwen2.5 tokenizer) for training pairs, eval and serving alike: the one default
WINDOW_TOKENS = 256
EN_ENDERS = {".", "?", "!"}
ZH_ENDERS = set("。！？；!?;")


def _first_over(over: Callable[[int], bool], lo: int, hi: int) -> int:
    """The first j in [lo, hi) with ``over(j)`` (``over`` monotone), else ``hi``: galloping, then bisection."""
    step, prev = 1, lo
    j = lo
    while j < hi and not over(j):
        prev, j, step = j + 1, j + step, step * 2
    hi = min(j, hi)
    lo = prev
    while lo < hi:
        mid = (lo + hi) // 2
        if over(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def _pieces(
    text: str,
    offsets: Sequence[Sequence[int]],
    lang: str,
    count: Callable[[str], int],
    max_tokens: int,
    entities: Sequence[dict],
) -> list[tuple[int, int]]:
    """Sentence-or-smaller pieces as (start_char, end_char), each within the cap where possible."""
    inside = set()  # token indices after which a cut would split an entity
    for e in entities:
        for i, (s, t) in enumerate(offsets):
            if e["start"] <= s and t < e["end"]:
                inside.add(i)
    enders = ZH_ENDERS if lang == "zh" else EN_ENDERS
    sentences, start_tok = [], 0
    for i, (s, t) in enumerate(offsets):
        if text[s:t] in enders and i not in inside:
            sentences.append((start_tok, i + 1))
            start_tok = i + 1
    if start_tok < len(offsets):
        sentences.append((start_tok, len(offsets)))
    pieces = []
    for a, b in sentences:
        if count(text[offsets[a][0] : offsets[b - 1][1]]) <= max_tokens:
            pieces.append((a, b))
            continue
        cur = a  # cut a long sentence at token boundaries, outside entities
        while cur < b:
            if inside:
                end = cur + 1
                while end < b and (end - 1 in inside or count(text[offsets[cur][0] : offsets[end][1]]) <= max_tokens):
                    end += 1
            else:  # raw text: the same cut found in O(log n) counts, not one per token (unpunctuated input)

                def over(j: int, first: int = offsets[cur][0]) -> bool:
                    return count(text[first : offsets[j][1]]) > max_tokens

                end = _first_over(over, cur + 1, b)
            pieces.append((cur, end))
            cur = end
    # piece k spans from the first char of its first token to the start of the next piece
    bounds = []
    for k, (a, _b) in enumerate(pieces):
        first = 0 if k == 0 else offsets[a][0]
        last = len(text) if k == len(pieces) - 1 else offsets[pieces[k + 1][0]][0]
        bounds.append((first, last))
    return bounds


def make_windows(
    text: str,
    offsets: Sequence[Sequence[int]],
    lang: str,
    count: Callable[[str], int],
    max_tokens: int,
    entities: Sequence[dict] | None = None,
) -> list[tuple[int, int]]:
    """Windows as (start_char, end_char) covering the whole text.

    ``entities`` given (annotated text): disjoint windows that never cut an entity.
    ``entities`` None (raw input): overlapping windows (one piece of overlap).
    """
    if not offsets or count(text) <= max_tokens:
        return [(0, len(text))]
    pieces = _pieces(text, offsets, lang, count, max_tokens, entities or [])
    overlap = entities is None
    windows: list[tuple[int, int]] = []
    i = 0
    while i < len(pieces):
        j = i + 1
        while j < len(pieces) and count(text[pieces[i][0] : pieces[j][1]]) <= max_tokens:
            j += 1
        windows.append((pieces[i][0], pieces[j - 1][1]))
        if j >= len(pieces):
            break
        i = j - 1 if overlap and j - 1 > i else j
    return windows


def entities_in_window(entities: Sequence[dict], start: int, end: int) -> list[dict]:
    """Gold entities inside a window, with offsets relative to the window."""
    return [{**e, "start": e["start"] - start, "end": e["end"] - start} for e in entities if start <= e["start"] and e["end"] <= end]


def merge_window_entities(per_window: Sequence[tuple[int, Sequence[dict]]]) -> list[dict]:
    """Shift window-relative entities by their window start and merge duplicates from overlaps
    (same start, end and type), in order of appearance."""
    seen, out = set(), []
    for start, ents in per_window:
        for e in ents:
            g = {**e, "start": e["start"] + start, "end": e["end"] + start}
            key = (g["start"], g["end"], g.get("type"))
            if key not in seen:
                seen.add(key)
                out.append(g)
    out.sort(key=lambda e: (e["start"], e["end"]))
    return out


def window_record(record: dict, start: int, end: int, window_id: str | None = None) -> dict:
    """The part of a record inside one window, as a record of its own (offsets relative to the window)."""
    toks = [(i, (s, e)) for i, (s, e) in enumerate(record["token_offsets"]) if start <= s and e <= end]
    return {
        "id": window_id or record["id"],
        "text": record["text"][start:end],
        "tokens": [record["tokens"][i] for i, _ in toks],
        "token_offsets": [[s - start, e - start] for _, (s, e) in toks],
        "entities": entities_in_window(record.get("entities", []), start, end),
    }
