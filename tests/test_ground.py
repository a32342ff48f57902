"""Grounding mention strings to character spans (data/ground.py)."""

import collections
import json

import pytest

from medner.data.ground import ground_mentions, simple_token_offsets


def g(text, mentions, lang="en"):
    return ground_mentions(text, [{"text": m, "type": "D"} for m in mentions], simple_token_offsets(text, lang))


def test_repeats_each_get_their_own_occurrence_left_to_right():
    text = "asthma and asthma, then more asthma"
    got, dropped = g(text, ["asthma", "asthma", "asthma"])
    assert [(e["start"], e["end"]) for e in got] == [(0, 6), (11, 17), (29, 35)]
    assert dropped == []


def test_out_of_order_mention_falls_back_to_first_unused_occurrence():
    text = "flu then cold then flu"
    got, _ = g(text, ["cold", "flu", "flu"])
    assert [e["start"] for e in got] == [9, 19, 0]


def test_token_boundaries_wfs_not_inside_wfs1():
    got, dropped = g("mutations in WFS1 cause Wolfram syndrome", ["WFS"])
    assert got == [] and dropped[0]["reason"] == "not on token boundaries"


def test_not_found_and_too_many():
    got, dropped = g("one flu", ["cold", "flu", "flu"])
    assert [e["text"] for e in got] == ["flu"]
    assert [d["reason"] for d in dropped] == ["not found in the text", "more mentions than occurrences in the text"]


def test_cjk_grounding_and_offsets():
    text = "宝宝发烧，宝宝咳嗽"
    got, _ = ground_mentions(
        text,
        [{"text": "宝宝", "type": "crowd"}, {"text": "宝宝", "type": "crowd"}, {"text": "咳嗽", "type": "symptom"}],
        simple_token_offsets(text, "zh"),
    )
    assert [(e["start"], e["end"]) for e in got] == [(0, 2), (5, 7), (7, 9)]
    assert all(text[e["start"] : e["end"]] == e["text"] for e in got)


@pytest.mark.parametrize("corpus,want_misplaced", [("ncbi-disease", 1), ("bc5cdr", 0), ("cmedqaner", 2)])
def test_gold_strings_misplaced_per_corpus(registry, corpus, want_misplaced, capsys):
    """Gold mentions given as strings only, grounded on the gold tokens: how many land elsewhere.

    Reported per corpus (printed with -s) and pinned here."""
    from medner.data.records import convert

    misplaced = dropped_n = total = 0
    for rec in convert(registry[corpus], "test"):
        got, dropped = ground_mentions(rec["text"], rec["entities"], rec["token_offsets"])
        gold = collections.Counter((e["start"], e["end"], e["type"]) for e in rec["entities"])
        placed = collections.Counter((e["start"], e["end"], e["type"]) for e in got)
        misplaced += sum((placed - gold).values())
        dropped_n += len(dropped)
        total += len(rec["entities"])
    print(json.dumps({"corpus": corpus, "mentions": total, "misplaced": misplaced, "dropped": dropped_n}))
    assert dropped_n == 0  # every gold string occurs on token boundaries
    assert misplaced == want_misplaced  # repeated short strings placed on another repeat
