"""Model replies -> predictions: parse the JSON answer, validate it against the schema, ground it.

Every failure is kept and labelled, never turned silently into "no entities":

* ``truncated``         the reply hit ``max_tokens`` (``finish_reason == "length"``); not parsed;
* ``invalid_json``      the reply is not JSON;
* ``schema_violation``  JSON, but not the answer schema (wrong type label, extra keys, ...);
* ``ok``                parsed; mentions grounded, the ones not found in the text listed in ``dropped``.
"""

from __future__ import annotations

import json
from typing import Sequence

import jsonschema

from medner.data.ground import ground_mentions

STATUSES = ("ok", "truncated", "invalid_json", "schema_violation", "error")


def parse_reply(
    raw: str | None,
    finish_reason: str | None,
    text: str,
    token_offsets: Sequence[Sequence[int]],
    schema: dict,
) -> dict:
    """Returns ``{"status", "entities", "dropped", "error"}`` for one reply."""
    out: dict = {"status": "ok", "entities": [], "dropped": [], "error": None}
    if finish_reason == "length":
        out.update(status="truncated", error="reply hit max_tokens before it ended")
        return out
    try:
        answer = json.loads(raw or "")
    except json.JSONDecodeError as e:
        out.update(status="invalid_json", error=f"not valid JSON: {e.msg} at char {e.pos}")
        return out
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(answer), key=lambda e: list(e.path))
    if errors:
        where = "/".join(str(p) for p in errors[0].path) or "(root)"
        out.update(status="schema_violation", error=f"{where}: {errors[0].message}")
        return out
    out["entities"], out["dropped"] = ground_mentions(text, answer["entities"], token_offsets)
    return out
