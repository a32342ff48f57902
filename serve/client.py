"""Extraction client: text -> prompt (prompts/) -> chat completion with the JSON Schema -> grounded entities.

Works against any OpenAI-compatible server that honours ``response_format`` with a JSON schema (the
vLLM server of ``medner serve``). Long texts are split by the data stage's windowing rule (overlapping
windows for raw input) and the results stitched back with offsets into the original text.

Each request's schema is bounded by its input (:func:`medner.prompts.schema.answer_schema`), and
``max_tokens`` is derived from that bound and clamped to the server's context window; a window whose
bound does not fit is split smaller. A reply cut by ``max_tokens`` is reported as ``truncated`` and
never parsed as "no entities".
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Sequence

import httpx

from medner.data.answer import parse_reply
from medner.data.ground import simple_token_offsets
from medner.data.registry import Label
from medner.data.windows import make_windows, merge_window_entities
from medner.prompts.render import build_messages
from medner.prompts.schema import answer_schema, max_reply_tokens

log = logging.getLogger(__name__)

MIN_WINDOW_TOKENS = 16


class ServerError(RuntimeError):
    """The server cannot be reached, is not ready, or refused a request."""


@dataclasses.dataclass
class Task:
    """What to extract: a label set, its language, and the prompt version."""

    labels: Sequence[Label]
    lang: str

    @property
    def label_names(self) -> list[str]:
        return [lab.name for lab in self.labels]


def task_for(corpus=None, labels=None, lang: str = "en") -> Task:
    """A task from a registered corpus, or from ad-hoc labels (a list of names or {name: description})."""
    if corpus is not None:
        return Task(corpus.labels, corpus.lang)
    if not labels:
        raise ValueError("give a corpus or a non-empty label set")
    if isinstance(labels, dict):
        labs = [Label(str(k), str(k), str(v or "")) for k, v in labels.items()]
    else:
        labs = [Label(str(k), str(k), "") for k in labels]
    if lang not in ("en", "zh"):
        raise ValueError(f"lang must be 'en' or 'zh', not {lang!r}")
    return Task(labs, lang)


def plan_requests(text: str, offsets, task: Task, cap: int, tokenizer, max_model_len: int, constrained: bool = True, max_tokens_cap: int | None = None) -> list[dict]:
    """The requests for one text: windows (overlapping, data-stage rule) with their messages, bounded
    schema and ``max_tokens``. A window whose reply bound does not fit the context is split smaller."""

    def count(t: str) -> int:
        return len(tokenizer(t, add_special_tokens=False)["input_ids"])

    plans = []
    for s, e in make_windows(text, offsets, task.lang, count, cap, None):
        wtext = text[s:e]
        woffs = [(a - s, b - s) for a, b in offsets if s <= a and b <= e]
        messages = build_messages(wtext, task.labels, task.lang)
        schema = answer_schema(task.label_names, wtext, len(woffs))
        prompt_tokens = count(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        bound = max_reply_tokens(schema, task.label_names) if constrained else 2 * count(wtext) + 64
        room = max_model_len - prompt_tokens - 8
        if bound > room and cap > MIN_WINDOW_TOKENS and len(woffs) > 1:
            for p in plan_requests(wtext, woffs, task, max(MIN_WINDOW_TOKENS, cap // 2), tokenizer, max_model_len, constrained, max_tokens_cap):
                p["start"] += s
                plans.append(p)
            continue
        max_tokens = max(1, min(bound, room))
        if max_tokens_cap:
            max_tokens = min(max_tokens, max_tokens_cap)
        plans.append({"start": s, "text": wtext, "offsets": woffs, "messages": messages, "schema": schema, "max_tokens": max_tokens, "prompt_tokens": prompt_tokens})
    return plans


def assemble_result(text: str, plans: Sequence[dict], replies: Sequence[dict]) -> dict:
    """Parse each window's reply (``{"raw", "finish_reason", "output_tokens", "error"?}``), ground it,
    and stitch the windows back with offsets into ``text``. The first failure names the status."""
    per_window, raws, statuses, errors, dropped = [], [], [], [], []
    for p, rep in zip(plans, replies):
        raws.append(rep["raw"])
        if rep["finish_reason"] == "error":
            statuses.append("error")
            errors.append(rep.get("error") or "request failed")
            continue
        parsed = parse_reply(rep["raw"], rep["finish_reason"], p["text"], p["offsets"], p["schema"])
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
        "finish_reason": "length" if any(r["finish_reason"] == "length" for r in replies) else (replies[-1]["finish_reason"] if replies else "stop"),
        "raw": raws,
        "windows": len(plans),
        "output_tokens": sum(r.get("output_tokens") or 0 for r in replies),
    }
    if errors:
        out["error"] = "; ".join(errors)
    return out


class ExtractClient:
    def __init__(
        self,
        url: str,
        model: str,
        api_key: str | None = None,
        concurrency: int = 8,
        timeout_s: float = 600.0,
        window_tokens: int = 256,
        max_model_len: int | None = None,
        constrained: bool = True,
        max_tokens_cap: int | None = None,
    ):
        self.url = url.rstrip("/")
        self.model = model
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.window_tokens = window_tokens
        self.max_model_len = max_model_len
        self.constrained = constrained
        self.max_tokens_cap = max_tokens_cap
        from medner.tokenizer import load_tokenizer

        self._tok = load_tokenizer()

    # -- server -----------------------------------------------------------------------------------
    def check_server(self) -> dict:
        """GET /models; one clear ServerError when the server is unreachable or lacks the model."""
        try:
            r = httpx.get(f"{self.url}/models", headers=self.headers, timeout=10)
        except httpx.HTTPError as e:
            raise ServerError(f"cannot reach the server at {self.url} ({type(e).__name__}); start it with `make serve` or pass --url") from None
        if r.status_code == 401:
            raise ServerError(f"server at {self.url} refused the API key (401); pass --api-key or set MEDNER_API_KEY")
        if r.status_code != 200:
            raise ServerError(f"server at {self.url} is not ready: GET /models answered {r.status_code}")
        models = {m["id"]: m for m in r.json().get("data", [])}
        if self.model not in models:
            raise ServerError(f"server at {self.url} does not serve model {self.model!r} (it serves: {', '.join(models)})")
        if self.max_model_len is None:
            card = models[self.model]
            parent = models.get(card.get("parent") or "", {})  # a LoRA adapter's card leaves it to its base
            self.max_model_len = card.get("max_model_len") or parent.get("max_model_len") or 4096
        return models

    # -- one text ---------------------------------------------------------------------------------
    def _plan(self, text: str, offsets, task: Task, cap: int) -> list[dict]:
        return plan_requests(text, offsets, task, cap, self._tok, self.max_model_len or 4096, self.constrained, self.max_tokens_cap)

    async def _complete(self, http: httpx.AsyncClient, plan: dict) -> dict:
        body = {
            "model": self.model,
            "messages": plan["messages"],
            "temperature": 0,
            "max_tokens": plan["max_tokens"],
        }
        if self.constrained:
            body["response_format"] = {"type": "json_schema", "json_schema": {"name": "entities", "schema": plan["schema"], "strict": True}}
        try:
            r = await http.post(f"{self.url}/chat/completions", json=body, headers=self.headers)
        except httpx.HTTPError as e:
            raise ServerError(f"cannot reach the server at {self.url} ({type(e).__name__})") from None
        if r.status_code != 200:
            try:
                detail = r.json().get("error", {}).get("message", "") if isinstance(r.json().get("error"), dict) else r.json().get("message", "")
            except ValueError:
                detail = ""
            return {"raw": None, "finish_reason": "error", "error": f"HTTP {r.status_code}: {str(detail)[:300]}", "output_tokens": 0}
        data = r.json()
        choice = data["choices"][0]
        return {
            "raw": choice["message"].get("content"),
            "finish_reason": choice.get("finish_reason"),
            "output_tokens": (data.get("usage") or {}).get("completion_tokens", 0),
        }

    async def extract_one(self, http: httpx.AsyncClient, text: str, task: Task, offsets=None) -> dict:
        """Grounded result for one text: ``{"text", "entities", "dropped", "status", ...}``."""
        t0 = time.perf_counter()
        result: dict = {"text": text, "entities": [], "dropped": [], "status": "ok"}
        if not text.strip():
            result.update(finish_reason="stop", raw=[], output_tokens=0, latency_s=0.0)
            return result
        offsets = [tuple(o) for o in offsets] if offsets is not None else simple_token_offsets(text, task.lang)
        plans = self._plan(text, offsets, task, self.window_tokens)
        replies = await asyncio.gather(*(self._complete(http, p) for p in plans))
        result.update(assemble_result(text, plans, replies))
        result["latency_s"] = time.perf_counter() - t0
        return result

    async def extract_many(self, items: Sequence[dict], task: Task, progress: bool = True, on_result=None) -> list[dict]:
        """Extract from ``[{"text", "id"?, "token_offsets"?}]`` with at most ``concurrency`` texts in
        flight. ``on_result(index, result)`` is called as each finishes (for incremental writing)."""
        from tqdm import tqdm

        sem = asyncio.Semaphore(self.concurrency)
        results: list[dict | None] = [None] * len(items)
        limits = httpx.Limits(max_connections=self.concurrency * 2)
        async with httpx.AsyncClient(timeout=self.timeout_s, limits=limits) as http:
            bar = tqdm(total=len(items), desc="extract", unit="text", disable=not progress)

            async def one(i: int, item: dict):
                async with sem:
                    res = await self.extract_one(http, item["text"], task, item.get("token_offsets"))
                if "id" in item:
                    res = {"id": item["id"], **res}
                results[i] = res
                if on_result:
                    on_result(i, res)
                bar.update(1)

            try:
                await asyncio.gather(*(one(i, it) for i, it in enumerate(items)))
            finally:
                bar.close()
        return results  # type: ignore[return-value]

    def extract(self, texts: Sequence[str] | Sequence[dict], task: Task, progress: bool = False) -> list[dict]:
        items = [t if isinstance(t, dict) else {"text": t} for t in texts]
        return asyncio.run(self.extract_many(items, task, progress))
