"""``POST /v1/extract``: grounded extraction for applications that do not want to build prompts.

A small FastAPI app on its own port that calls the vLLM server through :class:`ExtractClient`:

    POST /v1/extract  {"text": "...", "corpus": "ncbi-disease"}
                      {"text": "...", "labels": ["Disease"] | {"Disease": "description"}, "lang": "en"}
    -> {"text", "entities": [{"text", "type", "start", "end"}], "dropped": [...], "status"}
    GET  /health      -> {"status": "ok", "upstream": URL} or 503 when the vLLM server is down
    GET  /            -> a page: paste text, see the entities highlighted (served with the app, works offline)
    GET  /v1/corpora  -> the registered corpora with their languages and labels
    POST /predict     {"text": "...", "corpus": "ncbi-disease"} -> {"text", "entities": [{"text", "type", "start", "end"}]}
                      (only with ``--tokcls RUN_ADAPTER_DIR``: a token-classification run, in process, no vLLM;
                      concurrent requests share forward passes, see :mod:`medner.serve.batching`)

With an API key configured, every endpoint but ``/health`` and the page wants ``Authorization: Bearer KEY`` (401
otherwise; compared in constant time). Limits (:class:`Limits`) bound what one request may cost: text
size (413), ad-hoc labels and their descriptions (422), time (504) and requests in flight (429 beyond).
An upstream that is down or dies mid-request gives 503 with one line, never a hang or a traceback.
Request bodies are never logged.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import logging
import threading
import traceback
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from medner.data.registry import RegistryError, get_corpus, load_registry
from medner.data.windows import WINDOW_TOKENS
from medner.inference.runrecord import decode_wider, trained_types, untrained_warning
from medner.inference.server_client import ExtractClient, ServerError, UnknownModel, task_for
from medner.prompts.contract import BudgetError, grounded_mode
from medner.serve.batching import Batcher
from medner.serve.chat import (
    ChatError,
    answer_content,
    completion,
    ground,
    normalise,
    plan_for_model,
    stream_events,
)
from medner.serve.pool import UpstreamPool

log = logging.getLogger(__name__)

OPEN_PATHS = ("/health", "/")  # the page asks for the key and sends it with each request
PAGE = Path(__file__).with_name("static") / "index.html"


@dataclasses.dataclass
class Limits:
    # longest text accepted, in characters (413 beyond); the body may be at most 4 bytes per character + 64 KiB
    max_text_chars: int = 1_000_000
    # ad-hoc label sets: at most this many labels, each description at most this many characters (422 beyond)
    max_labels: int = 100
    max_label_chars: int = 500
    # seconds one request may take before it is answered 504 (a burst of 64 requests on a 2-core CPU with the
    # tiny model takes well under a minute; a long text with a real model takes longer)
    request_timeout_s: float = 600.0
    # requests being extracted at once; more get 429 with Retry-After (clients retry) instead of piling up
    max_in_flight: int = 128
    # upstream chat completions (windows) one request may need; a text needing more is refused with 413 before
    # any planning (128 windows of 256 tokens: about 130,000 characters of English, 45,000 of Chinese; longer
    # documents are batch work for `medner extract`)
    max_windows_per_request: int = 128
    # windows of one request in flight upstream at once, and windows of all requests together: one long text
    # cannot queue thousands of completions ahead of a short one
    max_windows_in_flight_per_request: int = 8
    max_upstream_in_flight: int = 64


def bad_unicode(value: Any, where: str = "") -> str | None:
    """The path of the first string in ``value`` that is not valid Unicode (a lone surrogate), else None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return where or "value"
        return None
    if isinstance(value, dict):
        for i, (k, v) in enumerate(value.items()):
            bad = bad_unicode(k, f"{where} key {i}") or bad_unicode(v, f"{where}[{i}]")
            if bad:
                return bad
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            bad = bad_unicode(v, f"{where}[{i}]")
            if bad:
                return bad
    return None


class StrictRequest(BaseModel):
    """A request body: unknown fields refused (a misspelt field is named, not ignored); every string valid Unicode."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="after")
    def _valid_unicode(self):
        for name in type(self).model_fields:
            bad = bad_unicode(getattr(self, name), name)
            if bad:
                raise ValueError(f"{bad} is not valid Unicode (it holds a lone surrogate)")
        return self


class ExtractRequest(StrictRequest):
    text: str = Field(..., description="the text to extract from")
    corpus: str | None = Field(None, description="a registered corpus whose label set and language to use")
    labels: list[str] | dict[str, str] | None = Field(None, description="ad-hoc labels, or {label: description}")
    lang: str = Field("en", description="en or zh (with ad-hoc labels)")
    model: str | None = Field(None, description="served model name (default: the API's model)")
    instruction: str | None = Field(
        None, description="a free-form request in your own words ('Which diseases are mentioned?'); {text} marks where the text goes"
    )
    grounded: bool | str = Field(
        True,
        description="every mention a span of the input, by construction: true (= ordered, the default), ordered, substring, or false for the plain schema",
    )


def _check_limits(req: ExtractRequest, limits: Limits) -> None:
    if len(req.text) > limits.max_text_chars:
        raise HTTPException(413, detail=f"text is {len(req.text):,} characters; the limit is {limits.max_text_chars:,} (max_text_chars)")
    if req.labels is not None:
        _check_labels(req.labels, limits)


def _check_labels(labels: list[str] | dict[str, str], limits: Limits) -> None:
    if labels is not None:
        req_labels = labels
        names = list(req_labels)
        if len(names) > limits.max_labels:
            raise HTTPException(422, detail=f"{len(names)} labels; the limit is {limits.max_labels} (max_labels)")
        texts = names + (list(req_labels.values()) if isinstance(req_labels, dict) else [])
        longest = max((len(t) for t in texts), default=0)
        if longest > limits.max_label_chars:
            raise HTTPException(
                422, detail=f"a label or description is {longest} characters; the limit is {limits.max_label_chars} (max_label_chars)"
            )


class PredictRequest(StrictRequest):
    text: str = Field(..., description="the text to tag")
    corpus: str | None = Field(None, description="the corpus the token-classification run was trained on (default: that one)")


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` *as received* (chunked bodies too, which carry no
    Content-Length) is answered 413 as soon as it crosses the limit; the rest is not read into memory."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise StarletteHTTPException(
                        413, f"request body is over {self.max_bytes:,} bytes (max_text_chars, at 4 bytes a character)"
                    )
            return message

        await self.app(scope, counted, send)


def validation_error(request: Request, exc: Exception) -> JSONResponse:
    """422 naming each bad field and why, never echoing what was sent (request text is patient text)."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    detail = [{"loc": [str(x) for x in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": e.get("type", "")} for e in errors]
    return JSONResponse({"detail": detail or "invalid request"}, status_code=422)


# long: the routes close over the app's state (clients, pool, limits, slots): FastAPI's app-factory idiom
def create_app(
    url: str | list[str],
    model: str,
    api_key: str | None = None,
    window_tokens: int = WINDOW_TOKENS,
    auth_key: str | None = None,
    limits: Limits | None = None,
    tagger=None,
) -> FastAPI:
    """``url``: the vLLM server, or a list of replicas (:class:`~medner.serve.pool.UpstreamPool`); ``api_key``:
    sent to the upstream; ``auth_key``: what clients of this app must send; ``tagger``: a loaded
    :class:`medner.inference.token_tagger.TokenTagger` (with its ``corpus``) to serve ``POST /predict``."""

    limits = limits or Limits()
    pool = UpstreamPool([url] if isinstance(url, str) else list(url), api_key)
    app = FastAPI(title="medner extraction API", version="1")
    app.add_middleware(BodyLimit, max_bytes=4 * limits.max_text_chars + 65536)
    app.add_exception_handler(RequestValidationError, validation_error)
    upstream_slots = asyncio.Semaphore(limits.max_upstream_in_flight)
    app.state.upstream_pool = pool
    clients: dict[tuple[str, str], ExtractClient] = {}
    versions: dict[tuple[str, str], str] = {}
    records: dict[tuple[str, str], dict | None] = {}  # the served model's run record, read once per client
    clients_lock = threading.Lock()
    state = {"in_flight": 0}
    want = f"Bearer {auth_key}".encode() if auth_key else None

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if want is not None and request.url.path not in OPEN_PATHS:
            got = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(got, want):
                return JSONResponse(
                    {"detail": "missing or wrong API key: send Authorization: Bearer KEY"},
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
        size = request.headers.get("content-length")
        if size and size.isdigit() and int(size) > 4 * limits.max_text_chars + 65536:
            return JSONResponse(
                {"detail": f"request body is {int(size):,} bytes; the text limit is {limits.max_text_chars:,} characters (max_text_chars)"},
                status_code=413,
            )
        return await call_next(request)

    def client_for(upstream: str, name: str) -> ExtractClient:
        with clients_lock:  # called from worker threads: one client per (upstream, model)
            return _client_for(upstream, name)

    def _client_for(upstream: str, name: str) -> ExtractClient:
        if (upstream, name) not in clients:
            c = ExtractClient(upstream, name, api_key=api_key, window_tokens=window_tokens, timeout_s=limits.request_timeout_s)
            c.check_server()
            versions[upstream, name] = c.task_version(None)  # the served model's trained prompt version (v1 without a record)
            records[upstream, name] = c.served_record()
            clients[upstream, name] = c
        return clients[upstream, name]

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        """A page to paste text and see the entities highlighted (plain HTML + JavaScript, nothing external)."""
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    @app.get("/v1/corpora")
    async def corpora():
        return {"corpora": [{"name": c.name, "lang": c.lang, "labels": c.label_names} for c in load_registry().values()]}

    batcher = None
    if tagger is not None:
        batcher = Batcher(tagger.tag_texts, max_batch=max(1, tagger.batch_size))
    app.state.predict_batcher = batcher

    def authorized(request: Request) -> bool:
        return want is None or hmac.compare_digest(request.headers.get("authorization", "").encode(), want)

    @app.get("/health")
    async def health(request: Request):
        if not authorized(request):  # without the key: up or not, nothing about the upstreams
            return await _health_details()
        return await _health_details(detailed=True)

    async def _health_details(detailed: bool = False):
        if not detailed:
            try:
                res = await _health_details(True)
            except HTTPException as e:
                raise HTTPException(e.status_code, detail="not ready") from None
            return {"status": res["status"]}
        if tagger is not None:  # the in-process model is loaded (the app starts after it); the upstream is optional
            return {"status": "ok", "tokcls": {"corpus": tagger.corpus, "labels": tagger.labels}, "upstream": url}
        if len(pool.urls) > 1:
            up = await pool.status()
            if any(up.values()):
                return {"status": "ok", "upstreams": up}
            raise HTTPException(503, detail=f"none of the {len(up)} vLLM servers is answering")
        only = pool.urls[0]
        try:
            async with httpx.AsyncClient(timeout=5) as http:
                r = await http.get(f"{only}/models", headers=pool.headers)
            if r.status_code == 200:
                return {"status": "ok", "upstream": only, "models": [m["id"] for m in r.json().get("data", [])]}
        except httpx.HTTPError:
            pass
        raise HTTPException(503, detail=f"vLLM server at {only} is not answering")

    async def bounded(work: Awaitable[Any], what: str) -> Any:
        """``work`` within the limits: 429 beyond ``max_in_flight`` requests, 504 past ``request_timeout_s``."""
        if state["in_flight"] >= limits.max_in_flight:
            if asyncio.iscoroutine(work):
                work.close()  # never started: closed, so it is not reported as never awaited
            raise HTTPException(
                429, detail=f"{limits.max_in_flight} requests in flight (max_in_flight); retry shortly", headers={"Retry-After": "1"}
            )
        state["in_flight"] += 1
        try:
            return await asyncio.wait_for(work, timeout=limits.request_timeout_s)
        except asyncio.TimeoutError:
            raise HTTPException(504, detail=f"{what} took longer than {limits.request_timeout_s:g} s (request_timeout_s)") from None
        finally:
            state["in_flight"] -= 1

    @app.post("/v1/extract")
    async def extract(req: ExtractRequest):
        _check_limits(req, limits)
        return await bounded(_extract(req), "extraction")

    @app.post("/predict")
    async def predict(req: PredictRequest):
        if batcher is None:
            raise HTTPException(404, detail="no token-classification model here: start `medner api --tokcls RUN_ADAPTER_DIR`")
        if len(req.text) > limits.max_text_chars:
            raise HTTPException(
                413, detail=f"text is {len(req.text):,} characters; the limit is {limits.max_text_chars:,} (max_text_chars)"
            )
        if req.corpus and req.corpus != tagger.corpus:
            raise HTTPException(422, detail=f"this model was trained on {tagger.corpus!r}, not {req.corpus!r}")
        res = await bounded(batcher.submit(req.text), "tagging")
        return {"text": req.text, "entities": res["entities"], "corpus": tagger.corpus}

    async def _extract(req: ExtractRequest) -> dict:
        try:  # the request itself first: a bad one is 422 whether or not the upstream is up
            corpus = get_corpus(req.corpus) if req.corpus else None
            task_for(corpus, req.labels, req.lang, instruction=req.instruction)
            grounded = grounded_mode(req.grounded)
        except (RegistryError, ValueError) as e:
            raise HTTPException(422, detail=str(e)) from None
        name = req.model or model
        last: ServerError | None = None
        for upstream in await pool.candidates():  # the next healthy replica; on failure the one after it
            try:
                client = await asyncio.to_thread(client_for, upstream, name)
                task = task_for(corpus, req.labels, req.lang, prompt_version=versions[upstream, name], instruction=req.instruction)
                record = records[upstream, name]
                warnings = untrained_warning(task.label_names, trained_types(record)["labels"])
                task = decode_wider(task, record)
                async with httpx.AsyncClient(timeout=client.timeout_s) as http:
                    res = await client.extract_one(
                        http,
                        req.text,
                        task,
                        grounded=grounded,
                        budget=limits.max_windows_per_request,
                        window_concurrency=limits.max_windows_in_flight_per_request,
                        shared=upstream_slots,
                    )
            except BudgetError as e:
                raise HTTPException(422 if e.kind == "labels" else 413, detail=str(e)) from None
            except UnknownModel as e:
                raise HTTPException(404, detail=str(e)) from None
            except ServerError as e:
                pool.mark_down(upstream, str(e))
                last = e
                continue
            except (HTTPException, asyncio.CancelledError):
                raise
            except Exception as e:  # anything else from the upstream's answer: a 502 naming the type, never a 500
                log.error(
                    "extraction failed upstream at %s: %s\n%s", upstream, type(e).__name__, "".join(traceback.format_tb(e.__traceback__))
                )
                raise HTTPException(502, detail=f"the vLLM server's answer could not be used ({type(e).__name__})") from None
            pool.answered(upstream)
            out = {k: res[k] for k in ("text", "entities", "dropped", "status", "error", "finish_reason", "other_types") if k in res}
            if warnings:
                out["warnings"] = warnings
            return out
        if last is None:
            raise HTTPException(503, detail=f"every vLLM server is down ({', '.join(pool.urls)}); retry shortly")
        raise HTTPException(503, detail=str(last) if len(pool.urls) == 1 else f"no vLLM server answered (last: {last})")

    @app.get("/v1/models")
    async def models_list():
        """The model this API serves, in OpenAI's list format (what an OpenAI client's ``models.list()`` reads)."""
        return {"object": "list", "data": [{"id": model, "object": "model", "created": 0, "owned_by": "medner"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatRequest):
        size = sum(len(json.dumps(m.get("content"), ensure_ascii=False)) for m in req.messages if isinstance(m, dict))
        if size > limits.max_text_chars:
            raise HTTPException(
                413, detail=f"the messages hold about {size:,} characters; the limit is {limits.max_text_chars:,} (max_text_chars)"
            )
        if req.labels is not None:
            _check_labels(req.labels, limits)
        if req.model not in (None, model):
            raise HTTPException(404, detail=f"this API serves model {model!r}, not {req.model!r}")
        done = await bounded(_chat(req), "the completion")
        if req.stream:
            return StreamingResponse(stream_events(done), media_type="text/event-stream")
        return done

    async def _chat(req: ChatRequest) -> dict:
        try:
            messages = normalise(req.messages)
        except ChatError as e:
            raise HTTPException(e.status, detail=str(e)) from None
        last: ServerError | None = None
        for upstream in await pool.candidates():
            try:
                client = await asyncio.to_thread(client_for, upstream, model)
                known = trained_types(records[upstream, model])
                labels = list(req.labels) if req.labels else known["labels"]
                warnings = list(known["warnings"]) + untrained_warning(labels, known["labels"])
                plan = await asyncio.to_thread(
                    _plan_chat, client, messages, labels, req.max_completion_tokens or req.max_tokens, known["labels"]
                )
                body = {
                    "model": model,
                    "messages": messages,
                    "temperature": req.temperature or 0,
                    "max_tokens": plan["max_tokens"],
                    "structured_outputs": {"grammar": plan["grammar"]},
                }
                async with upstream_slots, httpx.AsyncClient(timeout=client.timeout_s) as http:
                    r = await http.post(f"{upstream}/chat/completions", json=body, headers=pool.headers)
            except ChatError as e:
                raise HTTPException(e.status, detail=str(e)) from None
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError) as e:
                pool.mark_down(upstream, type(e).__name__)
                last = ServerError(f"cannot reach the server at {upstream} ({type(e).__name__})")
                continue
            except ServerError as e:
                pool.mark_down(upstream, str(e))
                last = e
                continue
            except httpx.HTTPError as e:
                raise HTTPException(504, detail=f"the vLLM server did not answer in time ({type(e).__name__})") from None
            except (HTTPException, asyncio.CancelledError):
                raise
            except Exception as e:  # anything else on the way: a 502 naming the type, never a 500
                log.error(
                    "chat completion failed upstream at %s: %s\n%s",
                    upstream,
                    type(e).__name__,
                    "".join(traceback.format_tb(e.__traceback__)),
                )
                raise HTTPException(502, detail=f"the vLLM server's answer could not be used ({type(e).__name__})") from None
            if r.status_code != 200:
                if r.status_code >= 500:
                    pool.mark_down(upstream, f"HTTP {r.status_code}")
                raise HTTPException(
                    502 if r.status_code >= 500 else 422, detail=f"the vLLM server refused the completion (HTTP {r.status_code})"
                )
            pool.answered(upstream)
            try:
                data = r.json()
                choice = data["choices"][0]
                raw, finish = choice["message"].get("content"), choice.get("finish_reason")
            except (ValueError, KeyError, IndexError, TypeError, AttributeError):
                raise HTTPException(502, detail="the vLLM server's answer was not a chat completion") from None
            medner = await asyncio.to_thread(ground, plan, raw, finish, labels)
            if warnings:
                medner["warnings"] = warnings
            return completion(model, answer_content(raw, medner), finish, data.get("usage"), medner)
        if last is None:
            raise HTTPException(503, detail=f"every vLLM server is down ({', '.join(pool.urls)}); retry shortly")
        raise HTTPException(503, detail=str(last))

    return app


class ChatRequest(StrictRequest):
    """An OpenAI chat-completions body; OpenAI's other sampling fields are accepted and left to medner's defaults
    (greedy decoding under the grounded grammar)."""

    model_config = ConfigDict(extra="allow")
    messages: list[Any] = Field(..., description="the conversation, OpenAI style")
    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    stream: bool = False
    # accepted and answered in the trained compact format: vLLM's json_object grammar writes another one
    response_format: dict | None = None
    labels: list[str] | dict[str, str] | None = Field(None, description="the types to extract (default: the served model's)")


def _plan_chat(client: ExtractClient, messages: list[dict], labels: list[str], max_tokens: int | None, known: list[str]) -> dict:
    return plan_for_model(messages, labels, max_tokens, client.tokenizer, client.context, known)
