"""The answer contract: ``{"entities": [{"text": ..., "type": ...}]}`` and its JSON Schema.

One function builds the schema from a label set. Training answers are validated against it, vLLM
receives it as ``response_format``, and eval validates replies with it, so the three cannot drift.

Bounding by the input
---------------------
With ``text`` given, the schema also bounds the reply so that every constrained generation is finite
and ends by itself, even from an untrained model:

* ``entities[].text`` has ``maxLength`` = the largest of 4, 8, 12, 16, 24, 32, 48, 64, 96 that is at most
  min(len(text), ``max_mention_chars``) (or that minimum itself when it is below 4);
* ``entities`` has ``maxItems`` = the largest power of two (1, 2, 4, ... 64) that is at most
  min(number of input tokens, ``max_entities``).

The bounds are rounded *down* to a few fixed steps because a grammar is compiled per distinct schema
(about 0.6 s each on a 2-core CPU): with steps, a whole test split needs a dozen grammars instead of
one per record. Rounding down only tightens the documented cap: a mention longer than the step below
the text's length (a mention that is nearly the whole of a short text) cannot be expressed.

:func:`max_reply_tokens` turns those bounds into a ``max_tokens`` budget for the request.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence

# The answer format, defined once: compact JSON, keys in the order text, type, no whitespace. Training
# answers are written with it, replies are parsed from it, and every constrained decoder is compiled
# with it (vLLM's xgrammar backend with ``disable_any_whitespace`` writes exactly these separators; the
# transformers path passes them to xgrammar explicitly, whose own default is ", " and ": ").
ANSWER_SEPARATORS = (",", ":")

DEFAULT_MAX_ENTITIES = 64  # more than any 256-token window of the vendored corpora holds
DEFAULT_MAX_MENTION_CHARS = 96  # the longest vendored mention is 94 characters (BC5CDR train)


LENGTH_STEPS = (4, 8, 12, 16, 24, 32, 48, 64, 96)
ITEM_STEPS = (1, 2, 4, 8, 16, 32, 64)


def _step_down(value: int, steps: Sequence[int]) -> int:
    """The largest step <= value (value itself when it is below the first step)."""
    below = [s for s in steps if s <= value]
    return below[-1] if below else value


def answer_schema(
    labels: Sequence[str],
    text: str | None = None,
    n_tokens: int | None = None,
    max_entities: int = DEFAULT_MAX_ENTITIES,
    max_mention_chars: int = DEFAULT_MAX_MENTION_CHARS,
) -> dict:
    """JSON Schema of the answer for ``labels``; bounded by ``text`` (and its token count) when given."""
    if not labels:
        raise ValueError("a schema needs at least one label")
    mention: dict = {"type": "string", "minLength": 1}
    entities: dict = {
        "type": "array",
        "items": {
            "type": "object",
            "properties": {"text": mention, "type": {"type": "string", "enum": list(labels)}},
            "required": ["text", "type"],
            "additionalProperties": False,
        },
    }
    if text is not None:
        mention["maxLength"] = _step_down(max(1, min(len(text), max_mention_chars)), LENGTH_STEPS)
        items = n_tokens if n_tokens is not None else len(text.split()) or 1
        entities["maxItems"] = _step_down(min(items, max_entities), ITEM_STEPS) if text and items > 0 else 0
    return {
        "type": "object",
        "properties": {"entities": entities},
        "required": ["entities"],
        "additionalProperties": False,
    }


def max_reply_tokens(schema: dict, labels: Sequence[str]) -> int:
    """An upper bound, in model tokens, on a reply that the bounded schema allows (no whitespace).

    Each mention character costs at most one token for ordinary text; JSON escapes are rare in
    mentions. A reply beyond this is cut by ``max_tokens`` and reported as truncated, never parsed.
    """
    ent = schema["properties"]["entities"]
    n_items = ent.get("maxItems", DEFAULT_MAX_ENTITIES)
    max_chars = ent["items"]["properties"]["text"].get("maxLength", DEFAULT_MAX_MENTION_CHARS)
    longest_type = max(len(t) for t in labels)
    per_item = 12 + max_chars + math.ceil(longest_type / 2)  # {"text":"...","type":"..."}, plus a comma
    return 8 + n_items * per_item


def schema_hash(labels: Sequence[str]) -> str:
    """Identifies a label set (and so the unbounded schema) in run records."""
    return hashlib.sha256(json.dumps(answer_schema(labels), sort_keys=True).encode()).hexdigest()


def answer_json(entities: Sequence[dict]) -> str:
    """The canonical answer string used as the training target (compact, no extra whitespace)."""
    return json.dumps(
        {"entities": [{"text": e["text"], "type": e["type"]} for e in entities]}, ensure_ascii=False, separators=ANSWER_SEPARATORS
    )
