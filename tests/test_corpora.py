"""The vendored corpora through the data stage: exact counts, lossless BIO round trip, pairs valid."""

import json

import jsonschema
import pytest

from medner.data.bio import read_bio
from medner.data.records import convert, record_tags
from medner.prompts.schema import answer_schema

# (records, mentions) per split, as in each corpus's NOTICE.md
COUNTS = {
    "ncbi-disease": {"train": (5424, 5134), "dev": (923, 787), "test": (940, 960)},
    "bc5cdr": {"train": (4560, 9385), "dev": (4581, 9593), "test": (4797, 9809)},
    "cmedqaner": {"train": (1673, 12490), "dev": (175, 1024), "test": (215, 1340)},
}


def test_registry_names_the_three_corpora(registry):
    assert {"ncbi-disease", "bc5cdr", "cmedqaner"} <= set(registry)
    for c in registry.values():
        assert c.notice and c.notice.is_file()


@pytest.mark.parametrize("corpus", sorted(COUNTS))
@pytest.mark.parametrize("split", ["train", "dev", "test"])
def test_counts_and_bio_round_trip(registry, corpus, split):
    c = registry[corpus]
    records = convert(c, split)
    assert (len(records), sum(len(r["entities"]) for r in records)) == COUNTS[corpus][split]
    sentences, problems = read_bio(c.file(split), c.scheme)
    assert problems == []
    for i, (rec, sent) in enumerate(zip(records, sentences)):
        assert rec["id"] == f"{corpus}:{split}:{i}"
        assert rec["tokens"] == sent.tokens
        assert [rec["text"][s:e] for s, e in rec["token_offsets"]] == sent.tokens
        for e in rec["entities"]:
            assert rec["text"][e["start"] : e["end"]] == e["text"]
        assert record_tags(rec) == [t.replace("_", "-", 1) for t in sent.tags]


def test_pairs_are_prompt_completion_and_schema_valid(registry):
    from medner.prompts.pairs import records_to_pairs
    from medner.tokenizer import token_counter

    c = registry["bc5cdr"]
    recs = convert(c, "dev")[:200]
    validator = jsonschema.Draft202012Validator(answer_schema(c.label_names))
    pairs = list(records_to_pairs(recs, c, token_counter()))
    assert len(pairs) == 200
    for p, r in zip(pairs, recs):
        assert [m["role"] for m in p["prompt"]] == ["system", "user"]
        assert p["prompt"][1]["content"] == r["text"]
        ans = json.loads(p["completion"][0]["content"])
        validator.validate(ans)
        assert [(e["text"], e["type"]) for e in ans["entities"]] == [(e["text"], e["type"]) for e in r["entities"]]
