"""BIO sentences -> records: ``{id, text, tokens, token_offsets, entities: [{text, type, start, end}]}``.

A record is one sentence (English) or one source text (Chinese); ``id`` is ``<corpus>:<split>:<index>``
and stays stable as long as the source file does. Offsets are character offsets into ``text``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path

from medner.data.bio import BioError, Sentence, char_spans_to_token_spans, read_bio, spans_to_tags, tags_to_spans
from medner.data.detok import join_tokens
from medner.data.formats import read_annotated
from medner.data.jsonl import read_jsonl  # noqa: F401  (re-exported: the records reader of eval and the CLI)
from medner.data.registry import Corpus


def sentence_to_record(sent: Sentence, rec_id: str, lang: str, scheme: str) -> dict:
    text, offsets = join_tokens(sent.tokens, lang)
    entities = []
    for sp in tags_to_spans(sent.tags, scheme):
        start, end = offsets[sp.start][0], offsets[sp.end - 1][1]
        entities.append({"text": text[start:end], "type": sp.label, "start": start, "end": end})
    return {"id": rec_id, "text": text, "tokens": list(sent.tokens), "token_offsets": [list(o) for o in offsets], "entities": entities}


def record_tags(record: dict) -> list[str]:
    """The IOB2 tags of a record's gold entities on its own tokens (the inverse of conversion)."""

    spans, dropped = char_spans_to_token_spans(
        [tuple(o) for o in record["token_offsets"]], [(e["start"], e["end"], e["type"]) for e in record["entities"]]
    )
    if dropped:
        # nested or overlapping gold (kept in records imported from annotation tools): BIO holds one layer

        logging.getLogger(__name__).warning(
            "record %s: %d overlapping gold mention(s) left out of its BIO tags: %s",
            record["id"],
            len(dropped),
            [(d[0], d[1], d[2]) if isinstance(d, (list, tuple)) else d for d in dropped],
        )
    return spans_to_tags(len(record["tokens"]), spans)


def convert(corpus: Corpus, split: str) -> list[dict]:
    """All records of one split. Raises BioError (with every file:line problem) on invalid input."""
    path = corpus.file(split)
    if corpus.format != "bio":
        return read_annotated(path, corpus.format, corpus.lang, corpus.label_names, f"{corpus.name}:{split}")
    sentences, problems = read_bio(path, corpus.scheme, corpus.label_names)
    if problems:
        raise BioError(problems)
    return [sentence_to_record(s, f"{corpus.name}:{split}:{i}", corpus.lang, corpus.scheme) for i, s in enumerate(sentences)]


def write_jsonl(rows: Iterable[dict], path: str | Path) -> int:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    tmp.replace(path)  # never leave a half-written file under the final name
    return n
