"""Extraction client: the HTTP side of the request contract, against an OpenAI-compatible server.

Planning, parsing and stitching are :mod:`medner.prompts.contract`'s (the same code every backend
uses); this module only sends each planned request as a chat completion with ``response_format`` =
the plan's JSON schema and returns the reply. Works against any server that honours JSON-schema
response formats (the vLLM server of ``medner serve``). A reply cut by ``max_tokens`` is reported as
``truncated`` and never parsed as "no entities".
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
from tqdm import tqdm

from medner.data.ground import simple_token_offsets
from medner.data.windows import WINDOW_TOKENS
from medner.inference.runrecord import prompt_version_for, read_record
from medner.prompts.contract import Plan, Reply, Task, assemble_result, check_budget, keep_asked, plan_requests, task_for
from medner.tokenizer import locked_tokenizer

__all__ = ["ExtractClient", "ServerError", "Task", "UnknownModel", "task_for"]

log = logging.getLogger(__name__)


# the context planned for when a server does not report its max_model_len (vLLM does)
UNKNOWN_CONTEXT = 4096


def error_detail(r: httpx.Response) -> str:
    """The message of an OpenAI-style error body (at most 300 characters), whatever the body holds."""
    try:
        body = r.json()
    except ValueError:
        return ""
    if not isinstance(body, dict):
        return ""
    err = body.get("error")
    msg = err.get("message", "") if isinstance(err, dict) else body.get("message", "")
    return str(msg)[:300]


class ServerError(RuntimeError):
    """The server cannot be reached, is not ready, or refused a request."""


class UnknownModel(ServerError):
    """The server is up but does not serve the model asked for."""


class ExtractClient:
    def __init__(
        self,
        url: str,
        model: str,
        api_key: str | None = None,
        concurrency: int = 8,
        timeout_s: float = 600.0,
        window_tokens: int = WINDOW_TOKENS,
        max_model_len: int | None = None,
        constrained: bool = True,
        max_tokens_cap: int | None = None,
        grounded: str | None = None,
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
        self.grounded = grounded  # None | "ordered" | "substring": every mention a span of the input

        self._tok = locked_tokenizer()  # planning runs in worker threads

    @property
    def tokenizer(self):
        """The (thread-safe) tokenizer requests are planned with."""
        return self._tok

    # -- server -----------------------------------------------------------------------------------
    def check_server(self) -> dict:
        """GET /models; one clear ServerError when the server is unreachable or lacks the model."""
        try:
            r = httpx.get(f"{self.url}/models", headers=self.headers, timeout=10)
        except httpx.HTTPError as e:
            raise ServerError(
                f"cannot reach the server at {self.url} ({type(e).__name__}); start it with `make serve` or pass --url"
            ) from None
        if r.status_code == 401:
            raise ServerError(f"server at {self.url} refused the API key (401); pass --api-key or set MEDNER_API_KEY")
        if r.status_code != 200:
            raise ServerError(f"server at {self.url} is not ready: GET /models answered {r.status_code}")
        try:
            models = {m["id"]: m for m in r.json().get("data", [])}
        except (ValueError, KeyError, TypeError, AttributeError):  # a server starting or dying mid-answer
            raise ServerError(f"server at {self.url} answered GET /models without a model list") from None
        if self.model not in models:
            raise UnknownModel(f"server at {self.url} does not serve model {self.model!r} (it serves: {', '.join(models)})")
        self.card = models[self.model]
        if self.max_model_len is None:
            card = models[self.model]
            parent = models.get(card.get("parent") or "", {})  # a LoRA adapter's card leaves it to its base
            self.max_model_len = card.get("max_model_len") or parent.get("max_model_len") or UNKNOWN_CONTEXT
        return models

    @property
    def context(self) -> int:
        """The served model's context in tokens (known after :meth:`check_server`)."""
        return self.max_model_len or UNKNOWN_CONTEXT

    def served_record(self) -> dict | None:
        """The run record of the served model when its folder is readable here (a merged adapter carries
        one), else None. Call :meth:`check_server` first."""

        root = (getattr(self, "card", None) or {}).get("root")
        try:
            return read_record(root) if root and Path(root).is_dir() else None
        except (OSError, ValueError):
            return None

    def task_version(self, requested: str | None, adapter_dir: str | None = None) -> str:
        """The prompt version to query the served model with: the run record's (from ``adapter_dir`` when
        given, else from the served folder), refusing another one asked for; else ``requested`` or v1."""

        rec = read_record(adapter_dir) if adapter_dir else self.served_record()
        return prompt_version_for(requested, rec, f"served model {self.model!r}" if not adapter_dir else adapter_dir)

    # -- one text ---------------------------------------------------------------------------------
    def plan(self, text: str, offsets, task: Task, grounded: str | None | bool = False) -> list[Plan]:
        """``grounded``: False = the client's own setting; None / a mode = this request's."""
        mode = self.grounded if grounded is False else grounded
        return plan_requests(text, offsets, task, self.window_tokens, self._tok, self.context, self.constrained, self.max_tokens_cap, mode)

    async def complete(self, http: httpx.AsyncClient, plan: Plan, constrained: bool | None = None) -> Reply:
        """One planned request -> its reply (``finish_reason: error`` with the HTTP status on refusal)."""
        constrained = self.constrained if constrained is None else constrained
        body = {
            "model": self.model,
            "messages": plan["messages"],
            "temperature": 0,
            "max_tokens": plan["max_tokens"],
        }
        if constrained and plan.get("grammar"):
            body["structured_outputs"] = {"grammar": plan["grammar"]}  # grounded decoding (vLLM's structured outputs)
        elif constrained:
            body["response_format"] = {"type": "json_schema", "json_schema": {"name": "entities", "schema": plan["schema"], "strict": True}}
        try:
            r = await http.post(f"{self.url}/chat/completions", json=body, headers=self.headers)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError) as e:  # the server's fault: try another
            raise ServerError(f"cannot reach the server at {self.url} ({type(e).__name__})") from None
        except httpx.HTTPError as e:  # this request's (a read timeout): the server stays in service
            return {"raw": None, "finish_reason": "error", "error": f"{type(e).__name__} from {self.url}", "output_tokens": 0}
        if r.status_code != 200:
            return {"raw": None, "finish_reason": "error", "error": f"HTTP {r.status_code}: {error_detail(r)}", "output_tokens": 0}
        try:
            data = r.json()
            choice = data["choices"][0]
            return {
                "raw": choice["message"].get("content"),
                "finish_reason": choice.get("finish_reason"),
                "output_tokens": (data.get("usage") or {}).get("completion_tokens", 0),
            }
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):  # a server dying mid-answer
            return {
                "raw": None,
                "finish_reason": "error",
                "error": f"HTTP 200 without a chat completion from {self.url}",
                "output_tokens": 0,
            }

    async def extract_one(
        self,
        http: httpx.AsyncClient,
        text: str,
        task: Task,
        offsets=None,
        grounded: str | None | bool = False,
        budget: int | None = None,
        window_concurrency: int = 64,
        shared: asyncio.Semaphore | None = None,
    ) -> dict:
        """Grounded result for one text: ``{"text", "entities", "dropped", "status", ...}``. ``budget``: the most
        window requests the text may need (:func:`check_budget` refuses more before planning); at most
        ``window_concurrency`` of its windows, and at most ``shared``'s slots over every caller, in flight."""
        t0 = time.perf_counter()
        result: dict = {"text": text, "entities": [], "dropped": [], "status": "ok"}
        if not text.strip():
            result.update(finish_reason="stop", raw=[], output_tokens=0, latency_s=0.0)
            return result
        mode = self.grounded if grounded is False else grounded

        def plan() -> list[Plan]:  # CPU-bound (tokenizing, windowing, grammars): run off the event loop
            if budget is not None:
                check_budget(text, task, self.window_tokens, self._tok, self.context, budget)
            offs = [tuple(o) for o in offsets] if offsets is not None else simple_token_offsets(text, task.lang)
            return self.plan(text, offs, task, mode)

        plans = await asyncio.to_thread(plan)
        mine = asyncio.Semaphore(max(1, window_concurrency))

        async def one(p: Plan) -> Reply:
            async with mine:
                if shared is None:
                    return await self.complete(http, p)
                async with shared:
                    return await self.complete(http, p)

        replies = await asyncio.gather(*(one(p) for p in plans))
        result.update(await asyncio.to_thread(assemble_result, text, plans, replies))
        keep_asked(result, task)
        result["latency_s"] = time.perf_counter() - t0
        return result

    async def extract_many(self, items: Sequence[dict], task: Task, progress: bool = True, on_result=None) -> list[dict]:
        """Extract from ``[{"text", "id"?, "token_offsets"?}]`` with at most ``concurrency`` texts in
        flight. ``on_result(index, result)`` is called as each finishes (for incremental writing)."""

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


# -- backend server ------------------------------------------------------------------------------
class ServerBackend:
    """Concurrent chat completions against ``medner serve`` (or any server honouring JSON-schema
    response formats); at most ``concurrency`` requests in flight."""

    name = "server"

    def __init__(self, client):
        self.client = client
        client.check_server()
        self.tokenizer = client._tok
        self.max_model_len = client.context
        self.chunk_records = 4 * client.concurrency  # enough to keep the server's batch full across chunk ends

    def generate(self, plans: Sequence[Plan], constrained: bool) -> list[Reply]:
        async def run() -> list[Reply]:
            sem = asyncio.Semaphore(self.client.concurrency)
            limits = httpx.Limits(max_connections=self.client.concurrency * 2)
            async with httpx.AsyncClient(timeout=self.client.timeout_s, limits=limits) as http:

                async def one(p: Plan) -> Reply:
                    async with sem:
                        t = time.perf_counter()
                        r = await self.client.complete(http, p, constrained)
                        r["latency_s"] = time.perf_counter() - t
                        return r

                return list(await asyncio.gather(*(one(p) for p in plans)))

        return asyncio.run(run())
