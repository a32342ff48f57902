"""``to_spacy``: medner results into spaCy ``Doc`` objects, for clinical pipelines built on spaCy.

spaCy is an optional extra (``pip install 'medner[spacy]'``); nothing else in medner imports it.

Every entity becomes a span of the ``Doc`` by its character offsets (``Doc.char_span``, strict alignment):

* ``doc.spans["medner"]`` holds every entity, overlapping ones included;
* ``doc.ents`` holds the ones that can coexist there (no overlaps: the earlier start wins, then the longer
  span — the data stage's rule for BIO);
* an entity whose offsets do not fall on the ``Doc``'s token boundaries (spaCy's tokenizer splits text
  differently from the corpus's) is not moved silently: it is listed in ``doc.user_data["medner_unaligned"]``.
"""

from __future__ import annotations

from typing import Any

SPAN_KEY = "medner"


def to_spacy(doc_or_nlp: Any, result: dict):
    """A result of ``medner extract`` / ``Extractor.extract`` / ``/v1/extract`` / ``/predict`` as a spaCy ``Doc``.

    ``doc_or_nlp``: a ``Doc`` whose text is the result's text (entities are added to it), or a ``Language``
    (``spacy.blank("en")``, a loaded pipeline), which makes the ``Doc`` from the result's text.
    """
    try:
        from spacy.language import Language
        from spacy.tokens import Doc
    except ImportError:  # pragma: no cover - the extra is not installed
        raise ImportError("to_spacy needs spaCy: pip install 'medner[spacy]'") from None
    text = result.get("text")
    if not isinstance(text, str):
        raise ValueError("result has no 'text' field: pass a whole result of medner extract / /v1/extract, not only its entities")
    if isinstance(doc_or_nlp, Language):
        doc = doc_or_nlp(text)
    elif isinstance(doc_or_nlp, Doc):
        doc = doc_or_nlp
        if doc.text != text:
            raise ValueError("the Doc's text differs from the result's text: offsets would point elsewhere")
    else:
        raise TypeError(f"expected a spaCy Doc or Language, not {type(doc_or_nlp).__name__}")
    spans, unaligned = [], []
    for i, e in enumerate(result.get("entities", [])):
        if not isinstance(e.get("start"), int) or not isinstance(e.get("end"), int):
            raise ValueError(f"entities[{i}] has no character offsets (start, end)")
        span = doc.char_span(e["start"], e["end"], label=e["type"], alignment_mode="strict")
        if span is None:
            unaligned.append(dict(e))
        else:
            spans.append(span)
    doc.spans[SPAN_KEY] = spans
    kept, end = [], -1
    for s in sorted(spans, key=lambda s: (s.start_char, -(s.end_char - s.start_char))):
        if s.start >= end:
            kept.append(s)
            end = s.end
    doc.ents = kept
    doc.user_data["medner_unaligned"] = unaligned
    return doc
