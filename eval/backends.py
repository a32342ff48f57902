"""Backends: given planned requests, return replies. And the one loop around them.

A backend only turns :class:`~medner.prompts.contract.Plan` s into
:class:`~medner.prompts.contract.Reply` s (raw text, finish reason, output tokens):

* :class:`HFBackend`      plain transformers ``generate``, batched, schema-constrained through xgrammar;
* :class:`VLLMBackend`    vLLM's offline engine (``vllm.LLM``) in-process;
* :class:`ServerBackend`  an OpenAI-compatible endpoint (``medner serve``), concurrent requests.

:func:`predict` is the loop every path shares (eval runs and the SFT dev evaluation): chunk the records,
plan each with the contract, generate, parse and assemble with the contract, hand each result to
``write``. So the backends cannot differ in prompts, windows, bounds or parsing, only in the tokens.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from medner.prompts.contract import Plan, Reply, Task, assemble_result, plan_requests

log = logging.getLogger(__name__)


class Backend(Protocol):
    name: str
    tokenizer: object  # counts tokens and renders the chat template for planning
    max_model_len: int
    chunk_records: int  # records planned and generated together

    def generate(self, plans: Sequence[Plan], constrained: bool) -> list[Reply]: ...


def predict(
    backend: Backend,
    records: Sequence[dict],
    task: Task,
    write: Callable[[dict], None],
    window_tokens: int = 256,
    constrained: bool = True,
    max_tokens_cap: int | None = None,
    warm_up: bool = True,
    grounded: str | None = None,
) -> float:
    """Records (``{"id", "text", "token_offsets"}``) -> one result per record, in order, through ``write``.

    Returns the wall time of planning + generation. Not included: model loading (the caller's) and one
    warm-up request (the first record's first window, its reply discarded) that every backend gets before
    the clock starts, as a running server has had: it fills the prefix cache with the task's shared
    instruction and pays the one-time start of the grammar compiler (about 2 s on a 2-core CPU).
    Each result carries ``latency_s``: the reply's own latency where the backend measures one (server),
    else the wall time of the batch it was generated in.
    """
    first = next((r for r in records if r["text"].strip()), None)
    if first is not None and warm_up:
        plan = plan_requests(
            first["text"],
            first["token_offsets"],
            task,
            window_tokens,
            backend.tokenizer,
            backend.max_model_len,
            constrained,
            max_tokens_cap,
            grounded,
        )[:1]
        backend.generate(plan, constrained)
    t0 = time.perf_counter()
    step = max(1, backend.chunk_records)
    for start in range(0, len(records), step):
        chunk = records[start : start + step]
        plans = [
            plan_requests(
                r["text"],
                r["token_offsets"],
                task,
                window_tokens,
                backend.tokenizer,
                backend.max_model_len,
                constrained,
                max_tokens_cap,
                grounded,
            )
            for r in chunk
        ]
        flat = [p for ps in plans for p in ps]
        t = time.perf_counter()
        replies = backend.generate(flat, constrained) if flat else []
        dt = time.perf_counter() - t
        k = 0
        for rec, ps in zip(chunk, plans):
            reps = replies[k : k + len(ps)]
            k += len(ps)
            res = {"id": rec["id"], "text": rec["text"], **assemble_result(rec["text"], ps, reps)}
            lat = [r["latency_s"] for r in reps if "latency_s" in r]
            res["latency_s"] = max(lat) if lat else (dt if ps else 0.0)
            write(res)
    return time.perf_counter() - t0


# -- transformers ---------------------------------------------------------------------------------
class HFBackend:
    """``generate`` over batches of ``batch_size`` plans; works on any loaded causal LM (a peft model too,
    as in the SFT dev evaluation)."""

    name = "hf"

    def __init__(self, model, tokenizer, batch_size: int = 16, max_model_len: int = 8192):
        self.model, self.tokenizer = model, tokenizer
        self.batch_size = batch_size
        self.max_model_len = max_model_len
        self.chunk_records = batch_size

    @classmethod
    def load(cls, model_dir: Path, adapter: str | None, merge: bool, batch_size: int, max_model_len: int) -> HFBackend:
        from medner.models import load_causal_lm

        model, tok = load_causal_lm(model_dir, adapter, merge=merge)
        return cls(model, tok, batch_size, max_model_len)

    def generate(self, plans: Sequence[Plan], constrained: bool) -> list[Reply]:
        from medner.hfgen import generate_batch

        was_training = self.model.training
        self.model.eval()
        out: list[Reply] = []
        try:
            for i in range(0, len(plans), self.batch_size):
                part = plans[i : i + self.batch_size]
                out += generate_batch(
                    self.model,
                    self.tokenizer,
                    [p["messages"] for p in part],
                    [p["max_tokens"] for p in part],
                    [p["schema"] for p in part] if constrained else None,
                    [p.get("grammar") for p in part] if constrained else None,
                )
        finally:
            if was_training:
                self.model.train()
        return out


# -- vLLM offline engine --------------------------------------------------------------------------
MAX_IN_FLIGHT = 128


class VLLMBackend:
    """vLLM's offline engine with the settings of :mod:`medner.engine` (the server's, too)."""

    name = "vllm"

    def __init__(
        self,
        model_dir: Path,
        adapter: str | None,
        merge,
        max_model_len: int,
        batch_size: int = 64,
        enable_prefix_caching: bool = True,
        kv_cache_gib: int = 2,
        block_size: int | None = None,
    ):
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib))
        from vllm import LLM
        from vllm.lora.request import LoRARequest

        from medner.engine import engine_settings, offline_kwargs

        # up to 128 requests of a chunk in flight at once: on a CPU, decoding is bound by reading the weights, so a
        # wider batch costs little more per step than a narrow one. A chunk larger than that is scheduled
        # continuously (a finished request's place goes to the next one), so one long reply does not hold the
        # others back as it does at a chunk's end
        s = engine_settings(
            model_dir,
            adapter,
            merge,
            max_model_len,
            enable_prefix_caching=enable_prefix_caching,
            block_size=block_size,
            max_num_seqs=min(MAX_IN_FLIGHT, max(32, batch_size)),
        )
        self.settings = s
        self.llm = LLM(**offline_kwargs(s))
        self.tokenizer = self.llm.get_tokenizer()
        self.lora = LoRARequest(s.lora_name, 1, s.lora_path) if s.lora_path else None
        self.max_model_len = max_model_len
        self.chunk_records = batch_size

    def generate(self, plans: Sequence[Plan], constrained: bool) -> list[Reply]:
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        def constraint(p: Plan):
            if not constrained:
                return None
            return StructuredOutputsParams(grammar=p["grammar"]) if p.get("grammar") else StructuredOutputsParams(json=p["schema"])

        params = [SamplingParams(temperature=0, max_tokens=p["max_tokens"], structured_outputs=constraint(p)) for p in plans]
        outs = self.llm.chat([p["messages"] for p in plans], params, use_tqdm=False, lora_request=self.lora)
        return [
            {
                "raw": o.outputs[0].text,
                "finish_reason": o.outputs[0].finish_reason,
                "output_tokens": len(o.outputs[0].token_ids),
                "prompt_tokens": len(o.prompt_token_ids or []),
                "cached_prompt_tokens": o.num_cached_tokens or 0,
            }
            for o in outs
        ]


# -- OpenAI-compatible server ---------------------------------------------------------------------
class ServerBackend:
    """Concurrent chat completions against ``medner serve`` (or any server honouring JSON-schema
    response formats); at most ``concurrency`` requests in flight."""

    name = "server"

    def __init__(self, client):
        self.client = client
        client.check_server()
        self.tokenizer = client._tok
        self.max_model_len = client.max_model_len or 4096
        self.chunk_records = 4 * client.concurrency  # enough to keep the server's batch full across chunk ends

    def generate(self, plans: Sequence[Plan], constrained: bool) -> list[Reply]:
        import httpx

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
