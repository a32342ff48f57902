"""Token streams -> natural text, with each token's exact character offsets.

English (PTB-like tokens, e.g. ``Parkinson ' s disease`` or ``( APC )``) is joined with one space between
tokens except where the table below says no space. Chinese character streams are joined with no
spaces. Tokens are copied verbatim (a whitespace token such as U+3000 stays a token of its own), so
``text[start:end] == token`` for every token.

English spacing table (``|`` marks where no space is written):

=====================  ==========================================  =======================================
token                  rule                                        example
=====================  ==========================================  =======================================
``. , ; : ? ! % ) +``  no space before                             ``cancer|,``  ``Ca2|+``
``] }``                no space before                             ``[|1|]``
``( [ {``              no space after                              ``(|APC``
``-`` ``/``            no space before or after                    ``ataxia|-|telangiectasia``  ``T|-|cell``
``'`` then ``s``/``t``  no space around the apostrophe             ``Parkinson|'|s``  ``don|'|t``
``'s`` ``n't`` ...     no space before a clitic token              ``Parkinson|'s``
``"`` (1st, 3rd, ...)  opening quote: no space after               ``"|word``
``"`` (2nd, 4th, ...)  closing quote: no space before              ``word|"``
=====================  ==========================================  =======================================
"""

from __future__ import annotations

from collections.abc import Sequence

NO_SPACE_BEFORE = {".", ",", ";", ":", "?", "!", "%", ")", "]", "}", "+"}
NO_SPACE_AFTER = {"(", "[", "{"}
JOINERS = {"-", "/"}
CLITICS = {"'s", "'S", "n't", "'re", "'ve", "'ll", "'d", "'m"}
APOSTROPHE_FOLLOWERS = {"s", "S", "t", "re", "ve", "ll", "d", "m"}


def _space_between(prev: str, tok: str, next_tok: str | None, prev_prev: str | None, quote_open: bool) -> bool:
    if tok in NO_SPACE_BEFORE or tok in CLITICS:
        return False
    if prev in NO_SPACE_AFTER:
        return False
    if tok in JOINERS or prev in JOINERS:
        return False
    if tok == "'" and next_tok in APOSTROPHE_FOLLOWERS:
        return False
    if prev == "'" and tok in APOSTROPHE_FOLLOWERS and prev_prev is not None:
        return False
    if tok == '"' and quote_open:  # closing quote
        return False
    if prev == '"' and quote_open:  # just after an opening quote
        return False
    return True


def join_tokens(tokens: Sequence[str], lang: str) -> tuple[str, list[tuple[int, int]]]:
    """Join tokens into text. Returns (text, offsets) with ``text[s:e] == tokens[i]`` for each i."""
    if lang not in ("en", "zh"):
        raise ValueError(f"unknown language {lang!r}; expected 'en' or 'zh'")
    parts: list[str] = []
    offsets: list[tuple[int, int]] = []
    pos = 0
    quote_open = False
    for i, tok in enumerate(tokens):
        if i > 0 and lang == "en":
            nxt = tokens[i + 1] if i + 1 < len(tokens) else None
            pp = tokens[i - 2] if i >= 2 else None
            if _space_between(tokens[i - 1], tok, nxt, pp, quote_open):
                parts.append(" ")
                pos += 1
        parts.append(tok)
        offsets.append((pos, pos + len(tok)))
        pos += len(tok)
        if tok == '"':
            quote_open = not quote_open
    return "".join(parts), offsets
