"""Readers, schemes, validation and the span <-> BIO rules of data/bio.py."""

import pytest

from medner.data.bio import (
    Span,
    char_spans_to_tags,
    check_tags,
    read_bio,
    spans_to_tags,
    tags_to_spans,
)


def write(tmp_path, name, content, mode="w"):
    p = tmp_path / name
    if isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_text(content, encoding="utf-8")
    return p


def test_tab_and_space_separators_and_underscore_tags(tmp_path):
    p = write(tmp_path, "a.tsv", "Aspirin\tB-Chemical\ncauses\tO\nasthma\tB-Disease\n\n")
    q = write(tmp_path, "b.txt", "便 B_disease\n秘 I_disease\n\u3000 O\n\u00a0 O\n\n")
    (s1,), pr1 = read_bio(p)
    (s2,), pr2 = read_bio(q)
    assert pr1 == pr2 == []
    assert s1.tokens == ["Aspirin", "causes", "asthma"]
    assert s2.tokens == ["便", "秘", "\u3000", "\u00a0"]  # whitespace tokens survive
    assert tags_to_spans(s2.tags) == [Span(0, 2, "disease")]


def test_bom_crlf_docstart_and_line_numbers(tmp_path):
    p = write(tmp_path, "a.tsv", b"\xef\xbb\xbf-DOCSTART-\tO\r\n\r\nThe\tO\r\nflu\tB-Disease\r\n\r\nBye\tO\r\n")
    sents, problems = read_bio(p)
    assert problems == []
    assert [s.tokens for s in sents] == [["The", "flu"], ["Bye"]]
    assert sents[0].lines == [3, 4]


@pytest.mark.parametrize(
    "content,line,fragment",
    [
        ("The\tO\nasthma\tI-Disease\n\n", 2, "orphan"),
        ("The\tO\tX\n\n", 1, "column"),
        ("The O X\n\n", 1, "column"),
        ("The\tQ-Disease\n\n", 1, "malformed tag"),
        ("The\n\n", 1, "column"),
        ("\tO\n\n", 1, "empty token"),
    ],
)
def test_problems_name_the_line(tmp_path, content, line, fragment):
    p = write(tmp_path, "bad.tsv", content)
    _, problems = read_bio(p)
    assert problems, content
    assert problems[0].line == line
    assert fragment in problems[0].message
    assert str(problems[0]).startswith(f"{p}:{line}: ")


def test_empty_file_and_bad_encoding(tmp_path):
    _, pe = read_bio(write(tmp_path, "empty.tsv", ""))
    assert [p.message for p in pe] == ["empty file: no sentences"]
    _, pb = read_bio(write(tmp_path, "latin.tsv", b"The\tO\ncaf\xe9\tO\n\n"))
    assert pb[0].line == 2 and "bad encoding" in pb[0].message


def test_unknown_label(tmp_path):
    _, problems = read_bio(write(tmp_path, "a.tsv", "x\tB-Gene\n\n"), labels=["Disease"])
    assert problems[0].line == 1 and "unknown label 'Gene'" in problems[0].message


def test_every_problem_is_reported_not_just_the_first(tmp_path):
    _, problems = read_bio(write(tmp_path, "a.tsv", "a\tI-X\n\nb\tO\tO\n\nc\tI-Y\n\n"))
    assert [p.line for p in problems] == [1, 3, 5]


def test_iob1_and_iob2_and_bioes_normalize_to_the_same_spans():
    want = [Span(0, 2, "D"), Span(2, 3, "D"), Span(4, 5, "C")]
    iob2 = ["B-D", "I-D", "B-D", "O", "B-C"]
    iob1 = ["I-D", "I-D", "B-D", "O", "I-C"]
    bioes = ["B-D", "E-D", "S-D", "O", "S-C"]
    bilou = ["B-D", "L-D", "U-D", "O", "U-C"]
    assert tags_to_spans(iob2, "iob2") == want
    assert tags_to_spans(iob1, "iob1") == want
    assert tags_to_spans(bioes, "bioes") == want
    assert tags_to_spans(bilou, "bioes") == want
    assert check_tags(iob1, scheme="iob1") == []
    assert check_tags(bioes, scheme="bioes") == []
    assert check_tags(iob1, scheme="iob2") != []  # I- opening a mention is an orphan under IOB2


def test_bioes_unclosed_and_orphans():
    assert check_tags(["B-D", "O"], scheme="bioes")
    assert check_tags(["B-D"], scheme="bioes")
    assert check_tags(["E-D"], scheme="bioes")
    assert check_tags(["B-D", "I-C", "E-C"], scheme="bioes")


def test_type_change_inside_mention_is_an_orphan_under_iob2():
    assert check_tags(["B-D", "I-C"]) and tags_to_spans(["B-D", "I-D", "B-C"]) == [Span(0, 2, "D"), Span(2, 3, "C")]


def test_spans_to_tags_round_trip():
    tags = ["O", "B-D", "I-D", "B-D", "O", "B-C", "I-C", "I-C"]
    assert spans_to_tags(len(tags), tags_to_spans(tags)) == tags


OFFS = [(0, 3), (4, 10), (11, 13), (14, 20)]  # "The asthma in adults"


def test_char_spans_on_boundaries():
    tags, dropped = char_spans_to_tags(OFFS, [(4, 10, "D"), (14, 20, "C")])
    assert tags == ["O", "B-D", "O", "B-C"] and dropped == []


def test_char_span_inside_a_token_is_widened_to_the_token():
    tags, dropped = char_spans_to_tags(OFFS, [(5, 8, "D"), (9, 15, "C")])
    # (5,8) widens to token 1; (9,15) widens to tokens 1-3: same start, longer, so it wins
    assert tags == ["O", "B-C", "I-C", "I-C"] and dropped == [(5, 8, "D")]


def test_overlaps_keep_earliest_then_longest():
    tags, dropped = char_spans_to_tags(OFFS, [(11, 20, "C"), (4, 13, "D"), (4, 10, "X")])
    assert tags == ["O", "B-D", "I-D", "O"]
    assert sorted(dropped) == [(4, 10, "X"), (11, 20, "C")]


def test_duplicate_span_kept_once_and_whitespace_span_dropped():
    tags, dropped = char_spans_to_tags(OFFS, [(4, 10, "D"), (4, 10, "D"), (3, 4, "D")])
    assert tags == ["O", "B-D", "O", "O"]
    assert dropped == [(3, 4, "D"), (4, 10, "D")]


def test_cjk_char_spans():
    offs = [(i, i + 1) for i in range(6)]  # 宝宝出水痘了
    tags, _ = char_spans_to_tags(offs, [(0, 2, "crowd"), (3, 5, "disease")])
    assert tags == ["B-crowd", "I-crowd", "O", "B-disease", "I-disease", "O"]
