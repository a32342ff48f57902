"""Records -> instruction/JSON pairs in TRL's conversational prompt-completion format.

One pair per window: ``{"id", "record_id", "window": [start, end], "prompt": [system, user],
"completion": [assistant]}``. The assistant answer is the canonical compact JSON of
``prompts/schema.py`` (mentions in order of appearance, repeats kept) and is validated against the
label set's schema before it is written.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable, Iterator

import jsonschema

from medner.data.registry import Corpus
from medner.data.windows import WINDOW_TOKENS, entities_in_window, make_windows
from medner.prompts.instructions import chat_pair
from medner.prompts.render import PROMPT_VERSION, build_messages
from medner.prompts.schema import answer_json, answer_schema


def record_to_pairs(
    record: dict,
    corpus: Corpus,
    count: Callable[[str], int],
    max_window_tokens: int = WINDOW_TOKENS,
    prompt_version: str = PROMPT_VERSION,
    rng: random.Random | None = None,
    mix: dict[str, float] | None = None,
) -> list[dict]:
    """Training pairs of one record, one per window; with ``rng``, each in a chat style drawn from ``mix``
    (prompts/instructions.py), else the canonical prompt."""
    text = record["text"]
    windows = make_windows(text, record["token_offsets"], corpus.lang, count, max_window_tokens, record["entities"])
    validator = jsonschema.Draft202012Validator(answer_schema(corpus.label_names))
    pairs = []
    for k, (s, e) in enumerate(windows):
        ents = sorted(entities_in_window(record["entities"], s, e), key=lambda x: (x["start"], x["end"]))
        answer = answer_json(ents)
        errors = list(validator.iter_errors(json.loads(answer)))
        if errors:
            raise ValueError(f"record {record['id']}: training answer violates the schema: {errors[0].message}")
        pair = {
            "id": f"{record['id']}#{k}",
            "record_id": record["id"],
            "window": [s, e],
            "prompt": build_messages(text[s:e], corpus.labels, corpus.lang, prompt_version),
            "completion": [{"role": "assistant", "content": answer}],
        }
        if rng is not None:
            pair = chat_pair(pair, text[s:e], ents, corpus, rng, mix, prompt_version=prompt_version)
        pairs.append(pair)
    return pairs


def records_to_pairs(records: Iterable[dict], corpus: Corpus, count: Callable[[str], int], **kw) -> Iterator[dict]:
    for rec in records:
        yield from record_to_pairs(rec, corpus, count, **kw)
