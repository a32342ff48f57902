"""CoNLL-style BIO files: reading, validation, tag schemes, and the span <-> tag mappings.

Pure functions only (no model, no tokenizer), so the rules here are easy to test exhaustively.

File format accepted
--------------------
* One token and its tag per line, separated by a TAB or a SPACE. The line is split on its *last*
  separator, because some corpora have tokens that are themselves whitespace (U+3000, U+00A0).
  A line with a TAB must have exactly two TAB-separated columns; a SPACE-separated line must not
  have an ASCII space inside its token (that would be a third column).
* Tags: ``O``, ``B-X``/``I-X`` or ``B_X``/``I_X`` (plus ``E``/``S`` for BIOES and ``L``/``U`` for BILOU).
* Blank lines separate sentences; ``-DOCSTART-`` lines are skipped; UTF-8 with or without BOM; LF or CRLF.

Schemes
-------
* ``iob2`` (default): every mention starts with ``B``; an ``I`` that does not continue a mention of the
  same type is an error ("orphan I").
* ``iob1``: ``I`` starts a mention; ``B`` only separates two adjacent mentions of the same type.
* ``bioes``: ``B I* E`` or ``S``; ``L``/``U`` (BILOU) are read as ``E``/``S``.
All are normalized to spans ``(start_token, end_token_exclusive, label)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from pathlib import Path

SCHEMES = ("iob2", "iob1", "bioes")


@dataclasses.dataclass(frozen=True)
class Span:
    """A mention over token indices: tokens[start:end], with its label."""

    start: int
    end: int
    label: str


@dataclasses.dataclass
class Sentence:
    tokens: list[str]
    tags: list[str]
    lines: list[int]  # 1-based line number of each token in its file


@dataclasses.dataclass(frozen=True)
class Problem:
    """One thing wrong with an input file, with the place it was found."""

    path: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        return f"{where}: {self.message}"


class BioError(ValueError):
    """Raised when a file cannot be converted; carries every problem found."""

    def __init__(self, problems: Sequence[Problem]):
        self.problems = list(problems)
        shown = "\n".join(str(p) for p in self.problems[:20])
        more = f"\n... and {len(self.problems) - 20} more" if len(self.problems) > 20 else ""
        super().__init__(shown + more)


def split_tag(tag: str) -> tuple[str, str | None]:
    """``'B-Disease'`` -> ``('B', 'Disease')``; ``'O'`` -> ``('O', None)``. Raises ValueError if malformed."""
    if tag == "O":
        return "O", None
    if len(tag) >= 3 and tag[0] in "BIESLU" and tag[1] in "-_":
        return tag[0], tag[2:]
    raise ValueError(f"malformed tag {tag!r} (expected O, B-X, I-X, B_X, ...)")


def _nul_problem(name: str, raw: bytes) -> Problem:
    at = raw.index(b"\x00")
    return Problem(name, raw.count(b"\n", 0, at) + 1, f"NUL byte at byte {at}: not a UTF-8 text file (binary, UTF-16 or a sparse file?)")


def _decode(path: Path, raw: bytes) -> tuple[str | None, list[Problem]]:
    try:
        return raw.decode("utf-8-sig"), []
    except UnicodeDecodeError:
        pass
    problems = []
    for i, line in enumerate(raw.split(b"\n"), start=1):
        try:
            line.decode("utf-8-sig" if i == 1 else "utf-8")
        except UnicodeDecodeError as e:
            problems.append(Problem(str(path), i, f"bad encoding: not UTF-8 ({e.reason} at byte {e.start})"))
    return None, problems


def _split_line(line: str) -> tuple[str, str] | str:
    """Return (token, tag) or an error message."""
    if "\t" in line:
        cols = line.split("\t")
        if len(cols) != 2:
            return f"wrong column count: {len(cols)} TAB-separated columns, expected 2 (token, tag)"
        token, tag = cols
    else:
        cut = line.rfind(" ")
        if cut < 0:
            return "wrong column count: 1 column, expected 2 (token, tag)"
        token, tag = line[:cut], line[cut + 1 :]
        if " " in token and token.strip(" ") != "":
            return f"wrong column count: {len(line.split(' '))} SPACE-separated columns, expected 2 (token, tag)"
    if token == "":
        return "empty token"
    if tag == "":
        return "empty tag"
    return token, tag


# long: one pass over the file; every check names file:line in the order a reader meets it
def read_bio(path: str | Path, scheme: str = "iob2", labels: Iterable[str] | None = None) -> tuple[list[Sentence], list[Problem]]:
    """Read a BIO file. Returns the sentences and every problem found (none means the file is valid).

    ``labels``, when given, is the label set the file must stay within.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    path = Path(path)
    name = str(path)
    try:
        with path.open("rb") as fh:
            # a binary, UTF-16 or sparse file shows NUL bytes at once: say so without reading the rest of it
            head = fh.read(1 << 20)
            if b"\x00" in head:
                return [], [_nul_problem(name, head)]
            raw = head + fh.read()
    except OSError as e:
        return [], [Problem(name, None, f"cannot read file: {e.strerror or e}")]
    if b"\x00" in raw:
        return [], [_nul_problem(name, raw)]
    text, problems = _decode(path, raw)
    if text is None:
        return [], problems
    known = set(labels) if labels is not None else None
    sentences: list[Sentence] = []
    cur = Sentence([], [], [])

    def flush() -> None:
        nonlocal cur
        if cur.tokens:
            problems.extend(Problem(name, ln, msg) for ln, msg in check_tags(cur.tags, cur.lines, scheme))
            sentences.append(cur)
        cur = Sentence([], [], [])

    for lineno, line in enumerate(text.split("\n"), start=1):
        line = line[:-1] if line.endswith("\r") else line
        if line.strip() == "":
            flush()
            continue
        if line.startswith("-DOCSTART-"):
            flush()
            continue
        got = _split_line(line)
        if isinstance(got, str):
            problems.append(Problem(name, lineno, got))
            continue
        token, tag = got
        try:
            prefix, label = split_tag(tag)
        except ValueError as e:
            problems.append(Problem(name, lineno, str(e)))
            continue
        if known is not None and label is not None and label not in known:
            problems.append(Problem(name, lineno, f"unknown label {label!r} (this corpus has: {', '.join(sorted(known))})"))
        cur.tokens.append(token)
        cur.tags.append(tag)
        cur.lines.append(lineno)
    flush()
    if not sentences and not problems:
        problems.append(Problem(name, 1, "empty file: no sentences"))
    return sentences, problems


def check_tags(tags: Sequence[str], lines: Sequence[int] | None = None, scheme: str = "iob2") -> list[tuple[int | None, str]]:
    """Scheme violations in one sentence, as (line, message) pairs."""
    out: list[tuple[int | None, str]] = []
    where = (lambda i: lines[i]) if lines is not None else (lambda i: None)
    prev_p, prev_l = "O", None
    for i, tag in enumerate(tags):
        try:
            p, lab = split_tag(tag)
        except ValueError as e:
            out.append((where(i), str(e)))
            prev_p, prev_l = "O", None
            continue
        p = {"L": "E", "U": "S"}.get(p, p)
        if scheme in ("iob2", "iob1") and p in "ES":
            out.append((where(i), f"tag {tag!r} is not allowed under {scheme}"))
        elif scheme == "iob2" and p == "I" and not (prev_p in "BI" and prev_l == lab):
            out.append((where(i), f"orphan {tag!r}: I- tag that does not continue a {lab} mention (scheme iob2)"))
        elif scheme == "bioes":
            open_ = prev_p in "BI"
            if p in "IE" and not (open_ and prev_l == lab):
                out.append((where(i), f"orphan {tag!r}: does not continue a {lab} mention (scheme bioes)"))
            elif p in "BSO" and open_:
                out.append((where(i - 1), f"mention {prev_l} opened by B-/I- is never closed by E- (scheme bioes)"))
        prev_p, prev_l = p, lab
    if scheme == "bioes" and prev_p in "BI" and tags:
        out.append((where(len(tags) - 1), f"mention {prev_l} is never closed by E- (scheme bioes)"))
    return out


def tags_to_spans(tags: Sequence[str], scheme: str = "iob2") -> list[Span]:
    """Tags of one sentence -> spans. Assumes the tags passed :func:`check_tags` for ``scheme``."""
    spans: list[Span] = []
    start, label = None, None

    def close(end: int) -> None:
        nonlocal start, label
        if start is not None:
            spans.append(Span(start, end, label))
        start, label = None, None

    for i, tag in enumerate(tags):
        p, lab = split_tag(tag)
        p = {"L": "E", "U": "S"}.get(p, p)
        if p == "O":
            close(i)
        elif p == "B":
            close(i)
            start, label = i, lab
        elif p == "I":
            if start is None or label != lab:
                close(i)  # iob1: I opens a mention
                start, label = i, lab
        elif p == "E":
            if start is None or label != lab:
                close(i)
                start, label = i, lab
            close(i + 1)
        elif p == "S":
            close(i)
            start, label = i, lab
            close(i + 1)
    close(len(tags))
    return spans


def spans_to_tags(n_tokens: int, spans: Iterable[Span]) -> list[str]:
    """Token spans -> IOB2 tags. Spans must not overlap (see :func:`char_spans_to_tags` for the rule that
    makes them so)."""
    tags = ["O"] * n_tokens
    for s in spans:
        for i in range(s.start, s.end):
            if tags[i] != "O":
                raise ValueError(f"span {s} overlaps another span at token {i}")
            tags[i] = ("B-" if i == s.start else "I-") + s.label
    return tags


def char_spans_to_token_spans(
    token_offsets: Sequence[tuple[int, int]], spans: Iterable[tuple[int, int, str]]
) -> tuple[list[Span], list[tuple[int, int, str]]]:
    """Character spans -> token spans that BIO can hold. Returns (kept, dropped).

    The rule, applied in this order:
    1. **Boundaries.** A character span covers every token it overlaps by at least one character; a span
       that starts or ends inside a token is widened to that token's edges. A span that overlaps no
       token (e.g. it lies on whitespace only) is dropped.
    2. **Overlaps.** BIO holds one mention per token, so spans are taken by earliest start, then
       longest, then input order; a span whose tokens overlap an already-taken span is dropped.
       Exact duplicates (same tokens and label) are kept once and the repeats dropped.
    """
    widened: list[tuple[int, int, int, tuple[int, int, str]]] = []
    dropped: list[tuple[int, int, str]] = []
    for order, (cs, ce, label) in enumerate(spans):
        toks = [i for i, (ts, te) in enumerate(token_offsets) if ts < ce and cs < te]
        if not toks:
            dropped.append((cs, ce, label))
            continue
        widened.append((toks[0], toks[-1] + 1, order, (cs, ce, label)))
    widened.sort(key=lambda w: (w[0], -(w[1] - w[0]), w[2]))
    taken = [False] * len(token_offsets)
    kept: list[Span] = []
    for s, e, _, orig in widened:
        if any(taken[s:e]):
            dropped.append(orig)
            continue
        for i in range(s, e):
            taken[i] = True
        kept.append(Span(s, e, orig[2]))
    kept.sort(key=lambda sp: sp.start)
    return kept, dropped


def char_spans_to_tags(
    token_offsets: Sequence[tuple[int, int]], spans: Iterable[tuple[int, int, str]]
) -> tuple[list[str], list[tuple[int, int, str]]]:
    """Character spans -> IOB2 tags on the given tokens, by the rule of :func:`char_spans_to_token_spans`.
    Returns (tags, dropped spans)."""
    kept, dropped = char_spans_to_token_spans(token_offsets, spans)
    return spans_to_tags(len(token_offsets), kept), dropped
