"""The English detokenization table and Chinese joining: text and exact offsets."""

import pytest

from medner.data.detok import join_tokens


@pytest.mark.parametrize(
    "tokens,text",
    [
        (["Parkinson", "'", "s", "disease", "."], "Parkinson's disease."),
        (["ataxia", "-", "telangiectasia", "gene"], "ataxia-telangiectasia gene"),
        (["adenomatous", "polyposis", "coli", "(", "APC", ")", "tumour"], "adenomatous polyposis coli (APC) tumour"),
        (["a", ",", "b", ";", "c", ":", "d", "?", "e", "!"], "a, b; c: d? e!"),
        (["5", "%", "of", "cases", "[", "1", "]"], "5% of cases [1]"),
        (["he", "said", '"', "no", "effect", '"', "twice"], 'he said "no effect" twice'),
        (["Ca2", "+", "channel"], "Ca2+ channel"),
        (["mother", "/", "child"], "mother/child"),
        (["don", "'", "t", "go"], "don't go"),
        (["the", "patients", "'", "files"], "the patients ' files"),
        (["John", "'s", "and", "ca", "n't"], "John's and can't"),
    ],
)
def test_english_table(tokens, text):
    got, offsets = join_tokens(tokens, "en")
    assert got == text
    assert [got[s:e] for s, e in offsets] == tokens


def test_chinese_joins_without_spaces_and_keeps_whitespace_tokens():
    tokens = ["宝", "宝", "\u3000", "发", "烧", "\u00a0", "了"]
    text, offsets = join_tokens(tokens, "zh")
    assert text == "宝宝\u3000发烧\u00a0了"
    assert [text[s:e] for s, e in offsets] == tokens


def test_offsets_exact_on_every_real_english_sentence(registry):
    from medner.data.bio import read_bio

    for name in ("ncbi-disease", "bc5cdr"):
        sents, _ = read_bio(registry[name].file("test"))
        for s in sents:
            text, offsets = join_tokens(s.tokens, "en")
            assert [text[a:b] for a, b in offsets] == s.tokens
            assert all(offsets[i][1] <= offsets[i + 1][0] for i in range(len(offsets) - 1))


def test_unknown_language():
    with pytest.raises(ValueError, match="unknown language"):
        join_tokens(["a"], "fr")
