"""The request contract, pure and typed: task -> plan -> (a backend generates) -> parse -> assemble.

Every path that asks a model for entities goes through these functions: eval's ``hf``, ``vllm`` and
``server`` backends, the SFT dev evaluation, ``medner extract`` and ``/v1/extract``. They differ only
in how tokens are produced (see ``medner.inference.backends``), so the prompt, the windows, the bounded
schema, ``max_tokens`` and the parsing rule cannot drift apart between them.

* :class:`Task`        what to extract: a label set, its language, the prompt version;
* :func:`plan_requests` one text -> window requests, each with its chat messages, its bounded answer
                        schema (the decoding constraint) and its ``max_tokens``;
* :func:`parse_reply`   one reply -> ``ok`` entities (grounded) or a labelled failure;
* :func:`assemble_result` a text's window replies -> one result with offsets into the text.

The answer format (separators, key order) is :data:`medner.prompts.schema.ANSWER_SEPARATORS`.
Nothing here does I/O; the tokenizer is passed in (only its counting and chat template are used).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Protocol, TypedDict

import jsonschema

from medner.data.ground import ground_mentions
from medner.data.registry import Label
from medner.data.windows import make_windows, merge_window_entities
from medner.prompts.grounded import GROUNDED_MODES, grounded_grammar, grounded_reply_bound
from medner.prompts.render import PROMPT_VERSION, build_messages
from medner.prompts.schema import answer_schema, max_reply_tokens

# the context length planned for when a backend does not say (vLLM and transformers backends: their setting)
MAX_MODEL_LEN = 8192
MIN_WINDOW_TOKENS = 16
# the smallest window of text worth a request: a label prompt that leaves less room than this is refused
MIN_USEFUL_WINDOW_TOKENS = 64
STATUSES = ("ok", "truncated", "invalid_json", "schema_violation", "error")


class ChatTokenizer(Protocol):
    """The part of a Hugging Face tokenizer the planner uses."""

    def __call__(self, text: str, add_special_tokens: bool = ...) -> dict: ...
    def apply_chat_template(self, messages: list[dict], tokenize: bool = ..., add_generation_prompt: bool = ...) -> str: ...


@dataclasses.dataclass(frozen=True)
class Task:
    """What to extract: a label set, its language, and the prompt version the model was trained with."""

    labels: Sequence[Label]
    lang: str
    prompt_version: str = PROMPT_VERSION
    # a free-form request in the user's words ("Which diseases are mentioned?"), sent instead of the templates:
    # ``{text}`` in it is replaced by each window's text, else the text follows it on a new line
    instruction: str | None = None
    # the types the decoder may write when more than the asked ones (the served model's trained types): a
    # grammar holding only the asked types would force mentions of other types into them; the result keeps
    # the asked types (:func:`keep_asked`)
    decode_labels: tuple[str, ...] | None = None

    def messages(self, text: str) -> list[dict]:
        """The chat messages of one window: the free-form instruction around it, or the prompt templates."""
        if self.instruction is None:
            return build_messages(text, self.labels, self.lang, self.prompt_version)
        user = self.instruction.replace("{text}", text) if "{text}" in self.instruction else f"{self.instruction}\n{text}"
        return [{"role": "user", "content": user}]

    @property
    def label_names(self) -> list[str]:
        return [lab.name for lab in self.labels]

    @property
    def decode_names(self) -> list[str]:
        """The types the answer schema and grammar admit: ``decode_labels``, then any asked type not in it."""
        extra = list(self.decode_labels or ())
        return extra + [n for n in self.label_names if n not in extra]


def keep_asked(result: dict, task: Task) -> dict:
    """``result`` with only the mentions of the task's asked types; ``other_types`` counts those left out."""
    asked = set(task.label_names)
    kept = [e for e in result["entities"] if e["type"] in asked]
    if len(kept) < len(result["entities"]):
        result["other_types"] = len(result["entities"]) - len(kept)
        result["entities"] = kept
    return result


def task_for(corpus=None, labels=None, lang: str = "en", prompt_version: str = PROMPT_VERSION, instruction: str | None = None) -> Task:
    """A task from a registered corpus, or from ad-hoc labels (a list of names or {name: description}); with
    ``instruction``, windows are asked in those words instead of the prompt templates."""
    if instruction is not None and not instruction.strip():
        raise ValueError("instruction is empty")
    if corpus is not None:
        if labels:  # a subset of the corpus's types, in its language
            by_name = {lab.name: lab for lab in corpus.labels}
            unknown = [n for n in labels if n not in by_name]
            if not unknown:
                return Task(tuple(by_name[n] for n in labels), corpus.lang, prompt_version, instruction)
        return Task(tuple(corpus.labels), corpus.lang, prompt_version, instruction)
    if not labels:
        raise ValueError("give a corpus or a non-empty label set")
    if isinstance(labels, dict):
        labs = [Label(str(k), str(k), str(v or "")) for k, v in labels.items()]
    else:
        labs = [Label(str(k), str(k), "") for k in labels]
    if lang not in ("en", "zh"):
        raise ValueError(f"lang must be 'en' or 'zh', not {lang!r}")
    return Task(tuple(labs), lang, prompt_version, instruction)


class Plan(TypedDict):
    """One request: a window of a text, offsets relative to the window."""

    start: int
    text: str
    offsets: list[tuple[int, int]]
    messages: list[dict]
    schema: dict  # the decoding constraint (and the validation schema of the reply)
    max_tokens: int
    prompt_tokens: int
    grammar: str | None  # grounded decoding: the constraint instead of the schema (the schema still validates)


class Reply(TypedDict, total=False):
    """What a backend returns per plan."""

    raw: str | None
    finish_reason: str | None  # stop | length | error
    output_tokens: int
    prompt_tokens: int  # vLLM offline engine: the prompt's tokens,
    cached_prompt_tokens: int  # and how many of them came from the prefix cache
    error: str


def grounded_mode(value) -> str | None:
    """``grounded`` setting -> a mode of :mod:`medner.prompts.grounded` or None (true = ordered)."""
    if value in (None, False, "false", "none", ""):
        return None
    if value in (True, "true"):
        return "ordered"
    if value in GROUNDED_MODES:
        return value
    raise ValueError(f"grounded must be true, false, {' or '.join(GROUNDED_MODES)}, not {value!r}")


def resolve_grounded(setting, constrained: bool, backend: str = "server") -> str | None:
    """The grounded-decoding mode a run uses. Unset (None) means the default: ``ordered`` where it applies
    (constrained decoding on a generative backend; it measured at least as accurate as the plain schema at
    the same speed on both corpora, BENCHMARKS.md), off for free decoding and token classification. An
    explicit setting is taken as written, and refused with free decoding."""
    if setting is None:
        return "ordered" if constrained and backend != "tokcls" else None
    mode = grounded_mode(setting)
    if mode and not constrained:
        raise ValueError("grounded decoding is a decoding constraint: it needs constrained=true")
    return mode


class BudgetError(ValueError):
    """A request that cannot be planned within its budget; ``kind`` is ``labels`` (the prompt cannot fit the
    context) or ``windows`` (the text needs more upstream requests than allowed)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def check_budget(text: str, task: Task, cap: int, tokenizer: ChatTokenizer, max_model_len: int, max_windows: int | None) -> int:
    """Refuse, before any planning, a request that cannot be served well: a label prompt that leaves no useful
    window in the context, or a text needing more than ``max_windows`` window requests. Returns the estimate
    of windows. Cost: one tokenization of the text and one of the empty prompt."""

    def count(t: str) -> int:
        return len(tokenizer(t, add_special_tokens=False)["input_ids"])

    prompt = count(tokenizer.apply_chat_template(task.messages(""), tokenize=False, add_generation_prompt=True))
    useful = min(cap, MIN_USEFUL_WINDOW_TOKENS)
    # the reply bound of a useful window: up to one mention per token, each with its longest type name
    type_tokens = max((count(json.dumps(name, ensure_ascii=False)) for name in task.decode_names), default=1)
    reply = useful * (type_tokens + 8) + useful
    if prompt + useful + reply > max_model_len:
        chars = sum(len(lab.name) + len(lab.description) for lab in task.labels)
        asked = f"this instruction ({len(task.instruction):,} characters) and " if task.instruction else ""
        raise BudgetError(
            "labels",
            f"the prompt for {asked}these {len(task.labels)} labels is {prompt:,} tokens ({chars:,} characters of names and descriptions), "
            f"and the answer for a window of {useful} tokens may need {reply:,} tokens with these type names: together over the "
            f"model's context of {max_model_len:,} tokens. Send fewer or shorter labels",
        )
    windows = -(-count(text) // max(1, min(cap, max_model_len - prompt - reply))) if text.strip() else 0
    if max_windows is not None and windows > max_windows:
        raise BudgetError(
            "windows",
            f"this text needs about {windows:,} window requests of {cap} tokens; the limit is {max_windows:,} per request "
            "(max_windows_per_request): split the text, or use `medner extract` for batch work",
        )
    return windows


# long: one window loop; the split of a window whose reply bound does not fit must stay beside it
def plan_requests(
    text: str,
    offsets: Sequence[Sequence[int]],
    task: Task,
    cap: int,
    tokenizer: ChatTokenizer,
    max_model_len: int,
    constrained: bool = True,
    max_tokens_cap: int | None = None,
    grounded: str | None = None,
) -> list[Plan]:
    """The requests for one text: windows (data-stage rule) with their messages, bounded schema and
    ``max_tokens``. A window whose reply bound does not fit the context is split smaller.

    Free decoding (``constrained=False``) keeps the schema for validating the reply and gets a budget
    of twice the window's tokens plus 64 (room for a verbose reply, still finite). Grounded decoding
    (``grounded="ordered"|"substring"``, constrained only) constrains with the window's span grammar
    (:mod:`medner.prompts.grounded`) and budgets its exact reply bound.
    """
    if grounded is not None and not constrained:
        raise ValueError("grounded decoding is a decoding constraint: it needs constrained=true")
    if not text.strip():
        return []
    offsets = [tuple(o) for o in offsets]

    def count(t: str) -> int:
        return len(tokenizer(t, add_special_tokens=False)["input_ids"])

    plans: list[Plan] = []
    types = task.decode_names
    for s, e in make_windows(text, offsets, task.lang, count, cap, None):
        wtext = text[s:e]
        woffs = [(a - s, b - s) for a, b in offsets if s <= a and b <= e]
        messages = task.messages(wtext)
        schema = answer_schema(types, wtext, len(woffs))
        prompt_tokens = count(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        grammar = None
        if grounded:
            entities = schema["properties"]["entities"]
            max_items = entities.get("maxItems")
            grammar = grounded_grammar(wtext, woffs, types, grounded, max_items=max_items)
            bound = grounded_reply_bound(wtext, woffs, types, grounded, max_items=max_items)
            # the schema only validates here: it must admit every reply the grammar does (any span, and in
            # ordered mode one mention per token), not the rounded bounds that keep schema grammars few
            entities["items"]["properties"]["text"]["maxLength"] = max(1, len(wtext))
            if grounded == "ordered":
                entities["maxItems"] = len(woffs)
        else:
            bound = max_reply_tokens(schema, types) if constrained else 2 * count(wtext) + 64
        room = max_model_len - prompt_tokens - 8
        if bound > room and cap > MIN_WINDOW_TOKENS and len(woffs) > 1:
            for p in plan_requests(
                wtext, woffs, task, max(MIN_WINDOW_TOKENS, cap // 2), tokenizer, max_model_len, constrained, max_tokens_cap, grounded
            ):
                p["start"] += s
                plans.append(p)
            continue
        max_tokens = max(1, min(bound, room))
        if max_tokens_cap:
            max_tokens = min(max_tokens, max_tokens_cap)
        plans.append(
            Plan(
                start=s,
                text=wtext,
                offsets=woffs,
                messages=messages,
                schema=schema,
                max_tokens=max_tokens,
                prompt_tokens=prompt_tokens,
                grammar=grammar,
            )
        )
    return plans


def parse_reply(raw: str | None, finish_reason: str | None, text: str, token_offsets: Sequence[Sequence[int]], schema: dict) -> dict:
    """One reply -> ``{"status", "entities", "dropped", "error"}``. Every failure is kept and labelled:

    * ``truncated``         the reply hit ``max_tokens`` (``finish_reason == "length"``); not parsed;
    * ``invalid_json``      the reply is not JSON;
    * ``schema_violation``  JSON, but not the answer schema (wrong type label, extra keys, ...);
    * ``ok``                parsed; mentions grounded, the ones not found in the text listed in ``dropped``.
    """
    out: dict = {"status": "ok", "entities": [], "dropped": [], "error": None}
    if finish_reason == "length":
        out.update(status="truncated", error="reply hit max_tokens before it ended")
        return out
    try:
        # strict=False: a raw TAB inside a string is accepted, since xgrammar's JSON grammar (the
        # decoding constraint) admits them and a constrained reply must never be lost as "invalid JSON"
        answer = json.loads(raw or "", strict=False)
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


def assemble_result(text: str, plans: Sequence[Plan], replies: Sequence[Reply]) -> dict:
    """Parse each window's reply, ground it, and stitch the windows back with offsets into ``text``.
    The first failure names the status; an empty text (no plans) is an ``ok`` result without entities."""
    if len(plans) != len(replies):
        raise ValueError(f"{len(plans)} plans but {len(replies)} replies")
    per_window, raws, statuses, errors, dropped = [], [], [], [], []
    for p, rep in zip(plans, replies):
        raws.append(rep.get("raw"))
        if rep.get("finish_reason") == "error":
            statuses.append("error")
            errors.append(rep.get("error") or "request failed")
            continue
        parsed = parse_reply(rep.get("raw"), rep.get("finish_reason"), p["text"], p["offsets"], p["schema"])
        statuses.append(parsed["status"])
        if parsed["error"]:
            errors.append(parsed["error"])
        per_window.append((p["start"], parsed["entities"]))
        dropped += [{**d} for d in parsed["dropped"]]
    bad = [st for st in statuses if st != "ok"]
    out = {
        "entities": merge_window_entities(per_window),
        "dropped": dropped,
        "status": bad[0] if bad else "ok",
        "finish_reason": "length"
        if any(r.get("finish_reason") == "length" for r in replies)
        else (replies[-1].get("finish_reason") if replies else "stop"),
        "raw": raws,
        "windows": len(plans),
        "output_tokens": sum(r.get("output_tokens") or 0 for r in replies),
    }
    if any("cached_prompt_tokens" in r for r in replies):  # where the backend reports prefix-cache reuse
        out["prompt_tokens"] = sum(r.get("prompt_tokens") or 0 for r in replies)
        out["cached_prompt_tokens"] = sum(r.get("cached_prompt_tokens") or 0 for r in replies)
    if errors:
        out["error"] = "; ".join(errors)
    return out
