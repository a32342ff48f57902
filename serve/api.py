"""``POST /v1/extract``: grounded extraction for applications that do not want to build prompts.

A small FastAPI app on its own port that calls the vLLM server through :class:`ExtractClient`:

    POST /v1/extract  {"text": "...", "corpus": "ncbi-disease"}
                      {"text": "...", "labels": ["Disease"] | {"Disease": "description"}, "lang": "en"}
    -> {"text", "entities": [{"text", "type", "start", "end"}], "dropped": [...], "status"}
    GET  /health      -> {"status": "ok", "upstream": URL} or 503 when the vLLM server is down

Request bodies are never logged.
"""

from __future__ import annotations

import logging

import httpx
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

from medner.data.registry import RegistryError, get_corpus
from medner.prompts.contract import grounded_mode
from medner.serve.client import ExtractClient, ServerError, task_for

log = logging.getLogger(__name__)


class ExtractRequest(BaseModel):
    text: str = Field(..., description="the text to extract from")
    corpus: str | None = Field(None, description="a registered corpus whose label set and language to use")
    labels: list[str] | dict[str, str] | None = Field(None, description="ad-hoc labels, or {label: description}")
    lang: str = Field("en", description="en or zh (with ad-hoc labels)")
    model: str | None = Field(None, description="served model name (default: the API's model)")
    grounded: bool | str = Field(False, description="every mention a span of the input: true (= ordered), ordered, substring or false")


def create_app(url: str, model: str, api_key: str | None = None, window_tokens: int = 256) -> FastAPI:
    app = FastAPI(title="medner extraction API", version="1")
    clients: dict[str, ExtractClient] = {}
    versions: dict[str, str] = {}

    def client_for(name: str) -> ExtractClient:
        if name not in clients:
            c = ExtractClient(url, name, api_key=api_key, window_tokens=window_tokens)
            c.check_server()
            versions[name] = c.task_version(None)  # the served model's trained prompt version (v1 without a record)
            clients[name] = c
        return clients[name]

    @app.get("/health")
    async def health():
        try:
            async with httpx.AsyncClient(timeout=5) as http:
                r = await http.get(f"{url.rstrip('/')}/models", headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
            if r.status_code == 200:
                return {"status": "ok", "upstream": url, "models": [m["id"] for m in r.json().get("data", [])]}
        except httpx.HTTPError:
            pass
        raise HTTPException(503, detail=f"vLLM server at {url} is not answering")

    @app.post("/v1/extract")
    async def extract(req: ExtractRequest):
        try:
            client = client_for(req.model or model)
        except ServerError as e:
            raise HTTPException(503, detail=str(e)) from None
        try:
            corpus = get_corpus(req.corpus) if req.corpus else None
            task = task_for(corpus, req.labels, req.lang, prompt_version=versions[req.model or model])
            grounded = grounded_mode(req.grounded)
        except (RegistryError, ValueError) as e:
            raise HTTPException(422, detail=str(e)) from None
        try:
            async with httpx.AsyncClient(timeout=client.timeout_s) as http:
                res = await client.extract_one(http, req.text, task, grounded=grounded)
        except ServerError as e:
            raise HTTPException(503, detail=str(e)) from None
        return {k: res[k] for k in ("text", "entities", "dropped", "status", "error", "finish_reason") if k in res}

    return app
