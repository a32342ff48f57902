"""Grounded answers: a grammar under which every mention the model writes is a span of its input.

The answer format is the contract's (``{"entities":[{"text":"...","type":"..."}]}``, compact separators);
only ``text`` is narrowed: it can be nothing but a contiguous run of the input's tokens (the data stage's
token boundaries, so ``WFS`` is never written inside ``WFS1``), copied with the text's own characters
between them, at most the window long (or ``max_mention_tokens`` tokens, see :func:`grounded_grammar`).
Two modes:

* ``ordered``   each mention starts at or after the end of the previous one (mentions in order of
                appearance, as training answers are written): no overlaps, no repetition loops; at most
                one mention per token, so every reply ends by itself;
* ``substring`` any span, in any order, at most ``max_items`` mentions (the bounded schema's ``maxItems``).

The grammar is xgrammar EBNF, the format vLLM's structured outputs (``grammar``) and the transformers path
(``compile_grammar``) both take, with about four rules per input token: ``s_i`` "a mention starts at
token i or later", ``q_i`` "it starts at token i", ``p_k`` "it goes on with token k", ``e_k`` (ordered) "a
mention ended before token k". Pure: no I/O, no tokenizer.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

GROUNDED_MODES = ("ordered", "substring")
# The longest gold mention is 22 tokens in NCBI-disease, 29 in cMedQANER, 56 in BC5CDR (all splits): by
# default a mention may be as long as its window (window_tokens), which every gold mention fits.

_HEAD = '{"entities":['
_TEXT = '{"text":"'
_TYPE = '","type":'


def _lit(s: str) -> str:
    """An EBNF string literal that matches ``s`` exactly."""
    return json.dumps(s, ensure_ascii=False)


def _json_inner(s: str) -> str:
    """``s`` as it appears inside a JSON string (what the model writes)."""
    return json.dumps(s, ensure_ascii=False)[1:-1]


def span_pieces(text: str, offsets: Sequence[Sequence[int]]) -> list[tuple[str, str]]:
    """Per token k: (its own characters, the characters from the end of token k-1 to its end), both
    JSON-escaped. A span j..k is piece[j][0] + piece[j+1][1] + ... + piece[k][1]."""
    out = []
    for k, (a, b) in enumerate(offsets):
        prev_end = offsets[k - 1][1] if k else a
        out.append((_json_inner(text[a:b]), _json_inner(text[prev_end:b])))
    return out


# long: the rules are emitted in one pass over the tokens; split, the same state would be passed around
def grounded_grammar(
    text: str,
    offsets: Sequence[Sequence[int]],
    labels: Sequence[str],
    mode: str = "ordered",
    max_mention_tokens: int | None = None,
    max_items: int | None = None,
) -> str:
    """The EBNF grammar of grounded answers for one window (``offsets`` relative to ``text``).

    ``max_mention_tokens`` = None: a mention may run to the end of the window (itself at most
    ``window_tokens`` model tokens), and the grammar has about 4 rules per token. A number caps mentions
    at that many tokens, exactly, at the price of about one rule per (token, length): measured on this
    CPU for a 365-character cMedQANER record, 0.3 s to compile uncapped, 3.9 s capped at 32, 11.6 s at 64.
    """
    if mode not in GROUNDED_MODES:
        raise ValueError(f"grounded mode must be one of {', '.join(GROUNDED_MODES)}, not {mode!r}")
    if not labels:
        raise ValueError("a grammar needs at least one label")
    n = len(offsets)
    if n == 0:
        return f"root ::= {_lit(_HEAD + ']}')}\n"
    capped = max_mention_tokens is not None and max_mention_tokens < n
    pieces = span_pieces(text, offsets)
    ordered = mode == "ordered"
    lines = [f"type ::= {' | '.join(_lit(json.dumps(lab, ensure_ascii=False)) for lab in labels)}"]
    if ordered:
        # the literals shared by every position are rules of their own (close, open): written once, they are
        # compiled once, not once per token (measured: compiling is the cost of grounded decoding in vLLM)
        lines.insert(0, f"root ::= {_lit(_HEAD)} ({_lit(']}')} | s0)")
        lines.append(f"close ::= {_lit(_TYPE)} type {_lit('}')}")
        lines.append(f"open ::= {_lit(_TEXT)}")
        for i in range(n + 1):
            tail = f"({_lit(']}')} | {_lit(',')} s{i})" if i < n else _lit("]}")
            lines.append(f"e{i} ::= close {tail}")
    else:
        k_items = max(1, max_items if max_items is not None else n)
        more = f" ({_lit(',')} item){{0,{k_items - 1}}}" if k_items > 1 else ""
        lines.insert(0, f"root ::= {_lit(_HEAD)} ({_lit(']}')} | item{more} {_lit(']}')})")
        lines.append(f"item ::= {_lit(_TEXT)} s0 {_lit(_TYPE)} type {_lit('}')}")
    # s_i: a mention starts at token i or later (ordered: after the previous mention's end)
    for i in range(n):
        if ordered:  # s_i = open, then a mention starting at token i or later (t_i)
            lines.append(f"s{i} ::= open t{i}")
            lines.append(f"t{i} ::= q{i}" + (f" | t{i + 1}" if i + 1 < n else ""))
        else:
            lines.append(f"s{i} ::= q{i}" + (f" | s{i + 1}" if i + 1 < n else ""))

    def step(here: str, nxt: str | None, end: int) -> str:
        """After ``here``'s characters: end the mention before token ``end``, or go on with ``nxt``."""
        if ordered:
            return f"{here} (e{end} | {nxt})" if nxt else f"{here} e{end}"
        return f"{here} {nxt}?" if nxt else here

    if not capped:
        # q_i: the mention's first token is i; p_k: it goes on with token k (and the characters before it)
        for i in range(n):
            lines.append(f"q{i} ::= " + step(_lit(pieces[i][0]), f"p{i + 1}" if i + 1 < n else None, i + 1))
        for k in range(1, n):
            lines.append(f"p{k} ::= " + step(_lit(pieces[k][1]), f"p{k + 1}" if k + 1 < n else None, k + 1))
    else:
        cap = max(1, max_mention_tokens or n)
        for j in range(n):
            lines.append(f"q{j} ::= p{j}_{j}")
            last = min(n, j + cap) - 1
            for k in range(j, last + 1):
                lit = _lit(pieces[j][0] if k == j else pieces[k][1])
                lines.append(f"p{j}_{k} ::= " + step(lit, f"p{j}_{k + 1}" if k < last else None, k + 1))
    return "\n".join(lines) + "\n"


def grounded_reply_bound(
    text: str,
    offsets: Sequence[Sequence[int]],
    labels: Sequence[str],
    mode: str = "ordered",
    max_mention_tokens: int | None = None,
    max_items: int | None = None,
) -> int:
    """An upper bound, in model tokens, on any reply the grammar allows (a token is at least one
    character, so the longest reply in characters bounds it): ``max_tokens`` that can never cut one."""
    n = len(offsets)
    longest_type = max(len(json.dumps(lab, ensure_ascii=False)) for lab in labels)
    per_item = len(_TEXT) + len(_TYPE) + longest_type + 2  # + "}" and ","
    fixed = len(_HEAD) + 2
    if n == 0:
        return fixed
    pieces = span_pieces(text, offsets)
    cap = n if max_mention_tokens is None else max(1, max_mention_tokens)
    if mode == "ordered":
        # disjoint spans in order: at most one mention per token, their characters at most the whole text's
        return fixed + n * per_item + sum(len(p[1]) for p in pieces) + len(pieces[0][0])
    longest_span = max(len(pieces[j][0]) + sum(len(pieces[k][1]) for k in range(j + 1, min(n, j + cap))) for j in range(n))
    k_items = max(1, max_items if max_items is not None else n)
    return fixed + k_items * (per_item + longest_span)
