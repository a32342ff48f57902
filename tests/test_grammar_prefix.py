"""Grammar fallback's instrument (prompts/grammar_prefix.py): on real grounded grammars of real test records,
the prefix check stops at the same character as xgrammar's matcher, a whole answer is complete exactly where
xgrammar accepts <|im_end|>, and the continuation grammar (compiled by xgrammar) admits the rest of the text."""

import json
import random

import pytest

from medner.data.records import convert
from medner.data.registry import get_corpus
from medner.prompts.grammar_prefix import Grammar
from medner.prompts.grounded import grounded_grammar

IM_END = 151645


@pytest.fixture(scope="module")
def compiler():
    import xgrammar as xgr

    from medner.tokenizer import load_tokenizer

    return xgr.GrammarCompiler(xgr.TokenizerInfo.from_huggingface(load_tokenizer(), vocab_size=151936))


def xgrammar_reads(compiler, grammar: str, text: str) -> tuple[int, bool]:
    """How many characters of ``text`` xgrammar accepts, and whether the whole text may end there."""
    import xgrammar as xgr

    m = xgr.GrammarMatcher(compiler.compile_grammar(grammar))
    for i, ch in enumerate(text):
        if not m.accept_string(ch):
            return i, False
    return len(text), m.accept_token(IM_END)


def ours_reads(g: Grammar, text: str) -> tuple[int, bool]:
    state = g.start()
    for i, ch in enumerate(text):
        nxt = g.advance(state, ch)
        if not nxt:
            return i, False
        state = nxt
    return len(text), g.complete(state)


def candidates(text: str, offs: list[tuple[int, int]], labels: list[str], rng: random.Random) -> list[str]:
    """A grounded answer (random spans in order) and the ways a free reply leaves such answers."""
    spans, i = [], 0
    while i < len(offs) and len(spans) < 4:
        j = rng.randrange(i, len(offs))
        k = min(len(offs) - 1, j + rng.randrange(0, 3))
        spans.append((offs[j][0], offs[k][1]))
        i = k + 1
    ok = json.dumps(
        {"entities": [{"text": text[a:b], "type": rng.choice(labels)} for a, b in spans]}, ensure_ascii=False, separators=(",", ":")
    )
    out = [ok, '{"entities":[]}', ok + "]", ok[:-3] + "x]}", ok.replace('"type"', '"typ"'), ok[: len(ok) // 2], '{"entities": []}']
    if spans:
        first = text[spans[0][0] : spans[0][1]]
        out.append(ok.replace(json.dumps(first, ensure_ascii=False)[1:-1], json.dumps(first, ensure_ascii=False)[1:-1] + "zz", 1))
    if len(spans) > 1:  # the second mention before the first: out of order
        ents = json.loads(ok)["entities"]
        out.append(json.dumps({"entities": [ents[1], ents[0], *ents[2:]]}, ensure_ascii=False, separators=(",", ":")))
    return out


@pytest.mark.parametrize("corpus,labels", [("ncbi-disease", ["Disease"]), ("cmedqaner", ["disease", "symptom", "drug"])])
def test_prefix_check_and_continuation_agree_with_xgrammar(compiler, corpus, labels):
    rng = random.Random(0)
    checked = fell_back = 0
    for rec in convert(get_corpus(corpus), "test")[:12]:
        text, offs = rec["text"], [tuple(o) for o in rec["token_offsets"]]
        ebnf = grounded_grammar(text, offs, labels, "ordered")
        g = Grammar.parse(ebnf)
        assert g is not None
        for cand in candidates(text, offs, labels, rng):
            assert ours_reads(g, cand) == xgrammar_reads(compiler, ebnf, cand), cand
            # from any point of the part that stays inside, the continuation admits exactly the rest
            n, _ = ours_reads(g, cand)
            cut = rng.randrange(0, n + 1)
            cont = g.continuation(g.advance(g.start(), cand[:cut]))
            rest_read, rest_complete = xgrammar_reads(compiler, cont, cand[cut:])
            assert (cut + rest_read, rest_complete) == xgrammar_reads(compiler, ebnf, cand), (cand, cut)
            checked += 1
            fell_back += n < len(cand)
    assert checked >= 90 and fell_back >= 30


def test_what_it_does_not_handle_is_refused_not_guessed():
    assert Grammar.parse(grounded_grammar("a b", [(0, 1), (2, 3)], ["Disease"], "substring", max_items=4)) is None
    assert Grammar.parse('root ::= "a" [b-z]') is None
    assert Grammar.parse('start ::= "a"') is None
    g = Grammar.parse('root ::= "{" (x | "b") "}"\nx ::= "a" "a"')
    assert g is not None and g.complete(g.advance(g.start(), "{aa}")) and not g.advance(g.start(), "{ab")
