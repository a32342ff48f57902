"""to_spacy: results as spaCy Docs with the real spaCy (a blank pipeline: its tokenizer, no model download)."""

import pytest

spacy = pytest.importorskip("spacy", reason="the spacy extra is installed by `make install`")

from medner import to_spacy  # noqa: E402

TEXT = "Familial adenomatous polyposis (FAP) and breast cancer; BRCA1-related cancer."


def _result():
    ents = [("Familial adenomatous polyposis", "Disease"), ("FAP", "Disease"), ("breast cancer", "Disease"), ("cancer", "Disease")]
    out, pos = [], 0
    for t, ty in ents:
        s = TEXT.index(t, pos)
        out.append({"text": t, "type": ty, "start": s, "end": s + len(t)})
        pos = s + len(t)
    # an overlapping (nested) mention and one that spaCy's tokenizer cannot align ("BRCA" inside "BRCA1")
    out.append({"text": "polyposis", "type": "Disease", "start": 21, "end": 30})
    out.append({"text": "BRCA", "type": "Gene", "start": TEXT.index("BRCA1"), "end": TEXT.index("BRCA1") + 4})
    return {"text": TEXT, "entities": out}


def test_entities_become_spans_with_the_same_offsets():
    doc = to_spacy(spacy.blank("en"), _result())
    assert [(s.text, s.label_, s.start_char, s.end_char) for s in doc.ents] == [
        ("Familial adenomatous polyposis", "Disease", 0, 30),
        ("FAP", "Disease", 32, 35),
        ("breast cancer", "Disease", 41, 54),
        ("cancer", "Disease", 70, 76),
    ]
    # every aligned mention in the span group, the nested one included; the unalignable one reported, not moved
    assert len(doc.spans["medner"]) == 5 and any(s.text == "polyposis" for s in doc.spans["medner"])
    assert [e["text"] for e in doc.user_data["medner_unaligned"]] == ["BRCA"]


def test_an_existing_doc_must_have_the_same_text():
    nlp = spacy.blank("en")
    doc = to_spacy(nlp(TEXT), _result())
    assert len(doc.ents) == 4
    with pytest.raises(ValueError, match="text differs"):
        to_spacy(nlp("another text"), _result())
    with pytest.raises(ValueError, match="no character offsets"):
        to_spacy(nlp, {"text": TEXT, "entities": [{"text": "FAP", "type": "Disease"}]})


def test_chinese_result_on_a_blank_chinese_pipeline():
    text = "宝宝出水痘了，需要吃阿昔洛韦吗？"
    res = {
        "text": text,
        "entities": [
            {"text": "水痘", "type": "disease", "start": 3, "end": 5},
            {"text": "阿昔洛韦", "type": "drug", "start": 10, "end": 14},
        ],
    }
    doc = to_spacy(spacy.blank("zh"), res)  # character segmentation by default
    assert [(e.text, e.label_) for e in doc.ents] == [("水痘", "disease"), ("阿昔洛韦", "drug")]
