"""Chat-style extraction behind an OpenAI-compatible ``POST /v1/chat/completions`` (see ``medner.serve.api``).

A client sends its own conversation: a question around a pasted text, a follow-up turn, any wording the model
was trained to understand (prompts/instructions.py). The conversation goes upstream as written; what medner adds
is the decoding constraint and the grounding:

* the reply is decoded under the grounded grammar of the *text message*, the longest user message of the
  conversation (the pasted text; a follow-up question is short), so every mention is a span of it, in the
  contract's compact format, whatever ``response_format`` the client asked for (vLLM's own ``json_object``
  grammar writes another format, which the model was not trained on);
* the grammar lets the model write any type it was trained on (its run record), and the answer keeps the asked
  ones (the request's ``labels``, else every trained type): a grammar holding only the asked types would force
  mentions of other types into them. Types the model never saw are answered with a warning, never silently;
* the completion carries ``medner``: the entities with ``message`` (index into ``messages``) and character
  offsets ``start``/``end`` into that message's content, the parse status and the warnings.

Pure functions: the HTTP side is the API's.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from medner.data.ground import simple_token_offsets
from medner.inference.runrecord import decode_types
from medner.prompts.contract import parse_reply
from medner.prompts.grounded import grounded_grammar, grounded_reply_bound
from medner.prompts.schema import answer_json, answer_schema

_CJK = re.compile(r"[\u3400-\u9fff]")
ROLES = ("system", "user", "assistant")
# the longest text message, in words, a chat request is grounded in: its grammar is one, over the whole message
# (measured on the tiny model: 1,700 words took over 30 s to answer; 3,400 words crashed the vLLM engine compiling it)
MAX_CHAT_TEXT_WORDS = 1024


class ChatError(ValueError):
    """A conversation that cannot be served: ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def message_text(content: Any, where: str) -> str:
    """A message's text: a string, or OpenAI content parts of type ``text`` joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content
    ):
        return "".join(p["text"] for p in content)
    raise ChatError(422, f"{where}.content must be a string or a list of text parts")


def normalise(messages: Sequence[Any]) -> list[dict]:
    """``[{"role", "content": str}]``, checked: known roles, text content, at least one user message."""
    if not messages:
        raise ChatError(422, "messages is empty")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise ChatError(422, f"messages[{i}].role must be one of {', '.join(ROLES)}")
        out.append({"role": m["role"], "content": message_text(m.get("content"), f"messages[{i}]")})
    if not any(m["role"] == "user" for m in out):
        raise ChatError(422, "messages holds no user message")
    return out


def text_message(messages: Sequence[dict]) -> int:
    """Index of the message whose spans the answer may use: the longest user message (the pasted text)."""
    users = [(len(m["content"]), -i, i) for i, m in enumerate(messages) if m["role"] == "user"]
    return max(users)[2]


def language(text: str) -> str:
    return "zh" if _CJK.search(text) else "en"


def plan_chat(messages: list[dict], labels: Sequence[str], max_tokens: int | None, room: int, known: Sequence[str] = ()) -> dict:
    """The upstream request's constraint for a conversation: the grounded grammar over its text message with
    the types :func:`decode_types` gives (``labels`` asked, ``known`` trained), and ``max_tokens`` (the
    client's, else the grammar's reply bound, never over the context's ``room``)."""
    labels = decode_types(labels, known)
    k = text_message(messages)
    text = messages[k]["content"]
    offsets = simple_token_offsets(text, language(text))
    if len(offsets) > MAX_CHAT_TEXT_WORDS:  # one grammar over the whole message: its compile grows past bounds
        raise ChatError(
            413,
            f"messages[{k}] holds {len(offsets):,} words; a chat request is grounded in one grammar over at most "
            f"{MAX_CHAT_TEXT_WORDS:,} (about 6,000 characters of English): send longer texts to /v1/extract, which windows them",
        )
    if room < 16:  # before the grammar: its cost grows with the text
        raise ChatError(413, f"the conversation leaves {max(0, room)} tokens of the model's context for the answer; send a shorter text")
    grammar = grounded_grammar(text, offsets, labels, "ordered")
    bound = grounded_reply_bound(text, offsets, labels, "ordered")
    budget = min(bound, room) if max_tokens is None else min(max_tokens, room)
    return {
        "message": k,
        "text": text,
        "offsets": offsets,
        "grammar": grammar,
        "max_tokens": max(1, budget),
        "types": labels,
    }


def plan_for_model(
    messages: list[dict], labels: Sequence[str], max_tokens: int | None, tokenizer, max_model_len: int, known: Sequence[str] = ()
) -> dict:
    """:func:`plan_chat` with the room the conversation's prompt leaves in the model's context."""
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    used = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    return plan_chat(messages, labels, max_tokens, max_model_len - used - 8, known)


def ground(plan: dict, raw: str | None, finish_reason: str | None, labels: Sequence[str]) -> dict:
    """The ``medner`` field: the reply's mentions of the asked ``labels`` with offsets into the text message;
    ``other_types`` counts mentions of types not asked for, left out (and out of :func:`answer_content`)."""
    parsed = parse_reply(raw, finish_reason, plan["text"], plan["offsets"], answer_schema(list(plan.get("types") or labels)))
    asked = set(labels)
    ents = [
        {"text": e["text"], "type": e["type"], "message": plan["message"], "start": e["start"], "end": e["end"]}
        for e in parsed["entities"]
        if e["type"] in asked
    ]
    out: dict = {"entities": ents, "status": parsed["status"]}
    if len(ents) < len(parsed["entities"]):
        out["other_types"] = len(parsed["entities"]) - len(ents)
    if parsed["error"]:
        out["error"] = parsed["error"]
    if parsed["dropped"]:
        out["dropped"] = len(parsed["dropped"])
    return out


def answer_content(raw: str | None, medner: dict) -> str:
    """The completion's content: the model's reply as written, or, where mentions of types not asked for were
    left out, the kept mentions in the same compact format."""
    if not medner.get("other_types"):
        return raw or ""
    return answer_json([{"text": e["text"], "type": e["type"]} for e in medner["entities"]])


def completion(model: str, content: str, finish_reason: str | None, usage: dict | None, medner: dict) -> dict:
    """An OpenAI ``chat.completion`` object with the ``medner`` field."""
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish_reason or "stop", "logprobs": None}
        ],
        "usage": usage or {},
        "medner": medner,
    }


def stream_events(done: dict, piece_chars: int = 16) -> Iterator[str]:
    """Server-sent events of ``chat.completion.chunk`` objects replaying a finished completion: the role, the
    content in pieces, then the finish reason with the ``medner`` field, then ``[DONE]``."""
    base = {"id": done["id"], "object": "chat.completion.chunk", "created": done["created"], "model": done["model"]}
    choice = done["choices"][0]
    content = choice["message"]["content"] or ""

    def event(delta: dict, finish: str | None = None, **extra: Any) -> str:
        chunk = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], **extra}
        return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"

    yield event({"role": "assistant", "content": ""})
    for i in range(0, len(content), piece_chars):
        yield event({"content": content[i : i + piece_chars]})
    yield event({}, choice["finish_reason"], medner=done["medner"], usage=done["usage"])
    yield "data: [DONE]\n\n"
