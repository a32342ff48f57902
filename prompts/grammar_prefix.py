"""Where a reply stands in a grammar: the prefix check and the continuation grammar behind grammar fallback.

Greedy decoding under a grammar picks, at each step, the most likely token the grammar allows. Where the
model's own most likely token is allowed, that is the same token, so a reply decoded without the grammar that
stays inside it is exactly the reply the grammar-constrained decoding would have given. A reply that leaves it
is identical up to the token that leaves; from there the constrained decoding goes on under the *rest* of the
grammar: the language of the grammar after that prefix (its derivative). This module computes both, for the
EBNF that :mod:`medner.prompts.grounded` writes (string literals, rule names, ``|`` and parentheses; the
repetition operators of the ``substring`` mode are not handled: :meth:`Grammar.parse` returns None for them).

Pure: no tokenizer, no engine. A position in the grammar is a tuple of what is still to be matched, leftmost
first: ``("L", chars)`` a literal (or its unmatched end), ``("R", name)`` a rule, ``("G", alternatives)`` a
parenthesised group; a set of them is the state after a prefix (a prefix may be read in several ways).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

Item = tuple  # ("L", str) | ("R", str) | ("G", tuple[tuple[Item, ...], ...])
Config = tuple  # tuple[Item, ...]

_LITERALS = re.compile(r'"(?:[^"\\]|\\.)*"')
_PLAIN = re.compile(r"[A-Za-z0-9_\s:=|()\"]*")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TOKEN = re.compile(r'\s*(?:("(?:[^"\\]|\\.)*")|([A-Za-z_][A-Za-z0-9_]*)|(::=|\||\(|\))|(\S))')


class _Unsupported(ValueError):
    pass


def _tokens(line: str) -> list[tuple[str, str]]:
    out = []
    for m in _TOKEN.finditer(line):
        lit, name, op, other = m.groups()
        if lit is not None:
            out.append(("lit", json.loads(lit)))
        elif name is not None:
            out.append(("name", name))
        elif op is not None:
            out.append(("op", op))
        elif other is not None:
            raise _Unsupported(other)  # ?, *, +, {m,n}, character classes: not in the ordered grammar
    return out


def _alternatives(toks: list[tuple[str, str]], i: int) -> tuple[tuple, int]:
    """Parse ``seq ('|' seq)*`` from toks[i]; stops at ')' or the end."""
    alts: list[tuple] = []
    seq: list[Item] = []
    while i < len(toks):
        kind, val = toks[i]
        if kind == "op" and val == "|":
            alts.append(tuple(seq))
            seq = []
            i += 1
        elif kind == "op" and val == ")":
            break
        elif kind == "op" and val == "(":
            group, i = _alternatives(toks, i + 1)
            if i >= len(toks) or toks[i] != ("op", ")"):
                raise _Unsupported("unbalanced parentheses")
            seq.append(("G", group))
            i += 1
        elif kind == "lit":
            if val:
                seq.append(("L", val))
            i += 1
        elif kind == "name":
            seq.append(("R", val))
            i += 1
        else:
            raise _Unsupported(val)
    alts.append(tuple(seq))
    return tuple(alts), i


# the grammar's own root, renamed in a continuation (whose root is where the prefix left off)
_OLD_ROOT = "root_start"


def _render_item(item: Item) -> str:
    kind, val = item
    if kind == "L":
        return json.dumps(val, ensure_ascii=False)
    if kind == "R":
        return _OLD_ROOT if val == "root" else val
    return "(" + " | ".join(_render_seq(seq) for seq in val) + ")"


def _render_seq(seq: Iterable[Item]) -> str:
    parts = [_render_item(it) for it in seq]
    return " ".join(parts) if parts else '""'


class Grammar:
    """An EBNF grammar (the subset above) that can tell where a prefix leaves it. Rules are parsed when a prefix
    first reaches them: a reply touches few of a window's rules (parsing all 64 grammars of 64 NCBI-disease
    records up front took 0.12 s, 2% of decoding them)."""

    def __init__(self, source: dict[str, str], text: str):
        self._source = source  # rule name -> its right-hand side, unparsed
        self._rules: dict[str, tuple] = {}
        self.text = text
        self._expanded: dict[Config, tuple[Config, ...]] = {}

    @classmethod
    def parse(cls, text: str) -> Grammar | None:
        """The grammar of ``text``, or None where it uses what this module does not handle."""
        bare = _LITERALS.sub('""', text)  # the text without its string literals: only names and operators left
        if not _PLAIN.fullmatch(bare) or any(line.count("(") != line.count(")") for line in bare.splitlines()):
            return None
        source: dict[str, str] = {}
        for line in text.splitlines():
            if not line.strip():
                continue
            name, sep, rhs = line.partition("::=")
            if not sep or not _NAME.fullmatch(name.strip()):
                return None
            source[name.strip()] = rhs
        # the root is renamed in a continuation: it must be referred to by no rule
        if "root" not in source or _OLD_ROOT in source or len(re.findall(r"\broot\b", bare)) != 1:
            return None
        return cls(source, text)

    def _rule(self, name: str) -> tuple:
        rule = self._rules.get(name)
        if rule is None:
            toks = _tokens(self._source[name])
            alts, i = _alternatives(toks, 0)
            if i != len(toks):
                raise ValueError(f"rule {name}: unbalanced parentheses")
            rule = self._rules[name] = alts
        return rule

    def start(self) -> frozenset[Config]:
        return frozenset({(("R", "root"),)})

    def _expand(self, config: Config) -> tuple[Config, ...]:
        """The configs ``config`` stands for with a literal first (or nothing left: ``()``)."""
        hit = self._expanded.get(config)
        if hit is not None:
            return hit
        out: list[Config] = []
        stack = [config]
        while stack:
            c = stack.pop()
            if not c:
                out.append(c)
                continue
            (kind, val), rest = c[0], c[1:]
            if kind == "L":
                out.append(c)
            elif kind == "R":
                stack.extend(seq + rest for seq in self._rule(val))
            else:
                stack.extend(seq + rest for seq in val)
        res = tuple(dict.fromkeys(out))
        if len(self._expanded) < 100_000:
            self._expanded[config] = res
        return res

    def advance(self, state: Iterable[Config], chars: str) -> frozenset[Config]:
        """The state after reading ``chars`` from ``state``; empty where the grammar allows no such text."""
        configs = set(state)
        for ch in chars:
            nxt: set[Config] = set()
            for c in configs:
                for e in self._expand(c):
                    if e and e[0][1][0] == ch:
                        tail = e[0][1][1:]
                        nxt.add((("L", tail),) + e[1:] if tail else e[1:])
            configs = nxt
            if not configs:
                break
        return frozenset(configs)

    def complete(self, state: Iterable[Config]) -> bool:
        """True where the text read so far is a whole sentence of the grammar (it may end here)."""
        return any(() in self._expand(c) for c in state)

    def continuation(self, state: Iterable[Config]) -> str:
        """The EBNF of what may follow: the grammar's rules (its root renamed), and a root that goes on from ``state``."""
        alts = sorted({_render_seq(c) for c in state})
        body = re.sub(r"^(\s*)root(\s*)::=", rf"\1{_OLD_ROOT}\2::=", self.text, count=1, flags=re.M)
        return f"root ::= {' | '.join(alts)}\n{body}" + ("" if body.endswith("\n") else "\n")
