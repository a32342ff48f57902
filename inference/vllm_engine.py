"""vLLM engine settings, built once for both the OpenAI-compatible server and the offline engine.

The server (``medner serve``) and eval's ``vllm`` backend must decode the same way, so both take their
settings from :func:`engine_settings`: the same structured-output backend and whitespace rule (the answer
format of :mod:`medner.prompts.schema`), the same greedy generation defaults, the same LoRA rank rule.
:func:`server_argv` writes them as the server's flags, :func:`offline_kwargs` as ``vllm.LLM`` arguments.

The adapter rule (:func:`plan_model`): on vLLM's CPU build an adapter is merged into its base and the
merged model is served alone. LoRA on the CPU build is 7-11x slower than the merged model, and base
requests batched with adapter requests were answered with the adapter's weights (measured; the same
class of bug as vllm-project/vllm#42008). On CUDA, LoRA serving stays the default (``merge=true`` merges).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from medner.inference.models import merged_model, on_cpu_build
from medner.prompts.contract import Plan, Reply
from medner.prompts.grammar_prefix import Grammar
from medner.prompts.schema import ANSWER_SEPARATORS

# vLLM's xgrammar backend compiles JSON schemas with separators (",", ":") when whitespace is disabled:
# the answer format every stage uses. The assertion ties the two together.
log = logging.getLogger(__name__)

STRUCTURED_OUTPUTS = {"backend": "xgrammar", "disable_any_whitespace": True}
assert ANSWER_SEPARATORS == (",", ":"), "vLLM's disable_any_whitespace writes (',', ':'); keep the answer format equal to it"


@dataclasses.dataclass
class EngineSettings:
    model: str  # folder vLLM loads (the base, or the merged model)
    served_name: str | None  # server: the model id clients send
    max_model_len: int
    dtype: str = "bfloat16"
    max_num_seqs: int = 32
    enable_prefix_caching: bool = True
    block_size: int | None = None  # KV-cache block in tokens (None: vLLM's default)
    lora_name: str | None = None  # LoRA serving (CUDA): the adapter's name and folder
    lora_path: str | None = None
    max_lora_rank: int = 16
    enforce_eager: bool = False  # no torch.compile: starts ~30 s sooner on a CPU (the tiny test model's setting)


def adapter_rank(adapter: str | Path) -> int:
    return int(json.loads((Path(adapter) / "adapter_config.json").read_text())["r"])


def lora_rank_bound(rank: int, configured: int = 16) -> int:
    """vLLM accepts max_lora_rank from a fixed set; the smallest allowed value >= the adapter's rank."""
    need = max(rank, configured)
    for allowed in (1, 8, 16, 32, 64, 128, 256, 320, 512):
        if allowed >= need:
            return allowed
    raise ValueError(f"LoRA rank {rank} is above what vLLM supports (512)")


def resolve_merge(merge: str | bool) -> bool:
    """``auto`` merges on the CPU build and keeps LoRA on CUDA."""
    if isinstance(merge, bool):
        return merge
    if merge != "auto":
        raise ValueError(f"merge must be auto, true or false, not {merge!r}")

    return on_cpu_build()


def plan_model(model_dir: Path, adapter: str | None, merge: str | bool) -> tuple[Path, str | None]:
    """(folder for vLLM to load, adapter to serve as LoRA or None): merges when the rule says so."""
    if not adapter:
        return model_dir, None
    if resolve_merge(merge):
        return merged_model(adapter, model_dir), None
    return model_dir, adapter


# vLLM's CPU build caches the KV of a prompt prefix in whole blocks of 128 tokens by default. medner's
# shared instruction (system prompt + chat template) is ~115 Qwen2.5 tokens for NCBI-disease, so with
# 128-token blocks no request ever reuses another's prefix (hit rate 0.0% measured); 32-token blocks (the
# CPU backend wants multiples of 32) cache 96 of those tokens for every request after the first.
CPU_BLOCK_SIZE = 32


def cpu_env(kv_cache_gib: int) -> dict[str, str]:
    """The environment vLLM's CPU build runs with (the caller's own settings win): the KV cache size, and the
    engine's compute threads bound to every CPU this process may use. vLLM's default keeps one core for its
    scheduler, which on a 2-core machine halves the compute: measured on 64 NCBI-disease records with the
    shipped adapter, 5.0 -> 8.2 records/s (grounded) and 5.9 -> 9.8 (free) with both cores bound."""
    if not on_cpu_build():
        return {}
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    return {"VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib), "VLLM_CPU_OMP_THREADS_BIND": ",".join(str(c) for c in cpus)}


def default_block_size() -> int | None:
    return CPU_BLOCK_SIZE if on_cpu_build() else None


def engine_settings(
    model_dir: Path,
    adapter: str | None,
    merge: str | bool,
    max_model_len: int,
    served_name: str | None = None,
    lora_name: str = "ner",
    max_lora_rank: int = 16,
    block_size: int | None = None,
    **kw,
) -> EngineSettings:
    """Settings for one engine that serves exactly the model the caller asked for."""
    path, lora = plan_model(model_dir, adapter, merge)
    s = EngineSettings(
        model=str(path), served_name=served_name, max_model_len=max_model_len, block_size=block_size or default_block_size(), **kw
    )
    if lora:
        s.lora_name, s.lora_path = lora_name, str(Path(lora).resolve())
        s.max_lora_rank = lora_rank_bound(adapter_rank(lora), max_lora_rank)
    return s


def server_argv(s: EngineSettings, host: str, port: int) -> list[str]:
    argv = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        s.model,
        "--host",
        host,
        "--port",
        str(port),
        "--max-model-len",
        str(s.max_model_len),
        "--dtype",
        s.dtype,
        "--max-num-seqs",
        str(s.max_num_seqs),
        "--structured-outputs-config",
        json.dumps(STRUCTURED_OUTPUTS),
        "--generation-config",
        "vllm",  # greedy defaults of vLLM, not the checkpoint's sampling settings
        "--disable-uvicorn-access-log",
    ]
    if s.served_name:
        argv += ["--served-model-name", s.served_name]
    argv += ["--enable-prefix-caching"] if s.enable_prefix_caching else ["--no-enable-prefix-caching"]
    if s.block_size:
        argv += ["--block-size", str(s.block_size)]
    if s.enforce_eager:
        argv += ["--enforce-eager"]
    if s.lora_path:
        argv += ["--enable-lora", "--lora-modules", f"{s.lora_name}={s.lora_path}", "--max-lora-rank", str(s.max_lora_rank)]
    return argv


def offline_kwargs(s: EngineSettings) -> dict:
    kw = dict(
        model=s.model,
        max_model_len=s.max_model_len,
        dtype=s.dtype,
        max_num_seqs=s.max_num_seqs,
        enable_prefix_caching=s.enable_prefix_caching,
        structured_outputs_config=dict(STRUCTURED_OUTPUTS),
        generation_config="vllm",
        enforce_eager=s.enforce_eager,
    )
    if s.block_size:
        kw["block_size"] = s.block_size
    if s.lora_path:
        kw.update(enable_lora=True, max_lora_rank=s.max_lora_rank)
    return kw


# -- backend vllm: the offline engine ------------------------------------------------------------
MAX_IN_FLIGHT = 128


class VLLMBackend:
    """vLLM's offline engine with the settings of :mod:`medner.inference.vllm_engine` (the server's, too)."""

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
        enforce_eager: bool = False,
        grammar_fallback: bool = True,
    ):
        for k, v in cpu_env(kv_cache_gib).items():
            os.environ.setdefault(k, v)
        if on_cpu_build():
            # the engine in this process: on a CPU its own engine process contends for the same cores with this
            # one's work per step (reading replies, grammar fallback), measured 64 NCBI-disease records, the
            # shipped adapter: grounded 9.6 -> 8.2 s, free 7.5 -> 7.5 s. The environment's own setting wins.
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        # vLLM: heavy, and reads its CPU settings from the environment when imported
        from vllm import LLM
        from vllm.lora.request import LoRARequest

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
            enforce_eager=enforce_eager,
        )
        self.settings = s
        self.llm = LLM(**offline_kwargs(s))
        self.tokenizer = self.llm.get_tokenizer()
        self.lora = LoRARequest(s.lora_name, 1, s.lora_path) if s.lora_path else None
        self.max_model_len = max_model_len
        self.chunk_records = batch_size
        self.grammar_fallback = grammar_fallback
        self.fallback_counts = {"free": 0, "continued": 0}  # of the last call with grammar fallback
        self._compiler_started = False

    def generate(self, plans: Sequence[Plan], constrained: bool) -> list[Reply]:
        grammars = [Grammar.parse(p["grammar"]) if constrained and p.get("grammar") else None for p in plans]
        if self.grammar_fallback and self._compiler_started and plans and all(grammars):
            return self._generate_with_fallback(plans, [g for g in grammars if g is not None])
        # the engine's first grammar starts its grammar compiler (about 2 s on a 2-core CPU, once): the first
        # call masks (the same replies), so that this happens in it (eval's warm-up request), not in a later,
        # timed call's first fallback
        self._compiler_started = self._compiler_started or (constrained and any(grammars))
        return self._generate(plans, constrained)

    def _generate(self, plans: Sequence[Plan], constrained: bool) -> list[Reply]:
        from vllm import SamplingParams  # vLLM: heavy, imported with the engine
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

    # long: one engine loop with three kinds of events (a free reply grows, leaves the grammar, or ends)
    def _generate_with_fallback(self, plans: Sequence[Plan], grammars: Sequence[Grammar]) -> list[Reply]:
        """Grammar fallback, for greedy grammar-constrained plans: the same replies as decoding under the grammar
        (:mod:`medner.prompts.grammar_prefix` says why), at the cost of free decoding wherever the model stays
        inside the grammar. Applying the grammar's token mask on this CPU costs about 20% of decoding time
        (vLLM masks the whole 152k vocabulary of every row at every step), so each reply is decoded free and
        checked as it grows; at the first token that leaves the grammar the reply is stopped and continued
        from the tokens before it (the prompt and those tokens as the new prompt, mostly from the prefix cache)
        under the rest of the grammar."""
        from vllm import SamplingParams  # vLLM: heavy, imported with the engine
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        engine = self.llm.llm_engine
        tok = self.tokenizer
        prompts = [
            tok.encode(tok.apply_chat_template(p["messages"], tokenize=False, add_generation_prompt=True), add_special_tokens=False)
            for p in plans
        ]
        state = [g.start() for g in grammars]
        tokens: list[list[int]] = [[] for _ in plans]
        text = ["" for _ in plans]
        valid = [0 for _ in plans]  # tokens whose text has been checked (a token ending inside a character waits)
        prefix: list[tuple[int, str]] = [(0, "") for _ in plans]  # (tokens, text) kept from the free reply
        cached = [0 for _ in plans]
        replies: list[Reply | None] = [None for _ in plans]
        live: dict[str, int] = {}
        fallen: set[int] = set()
        stamp = os.urandom(4).hex()

        def add(rid: str, i: int, prompt: list[int], params) -> None:
            engine.add_request(rid, {"prompt_token_ids": prompt}, params, lora_request=self.lora)
            live[rid] = i

        def fall_back(i: int) -> None:
            fallen.add(i)
            n, kept = valid[i], text[i]
            prefix[i] = (n, kept)
            grammar = grammars[i].continuation(state[i])
            params = SamplingParams(
                temperature=0,
                max_tokens=max(1, plans[i]["max_tokens"] - n),
                structured_outputs=StructuredOutputsParams(grammar=grammar),
                output_kind=RequestOutputKind.FINAL_ONLY,
            )
            add(f"g{i}-{stamp}", i, prompts[i] + tokens[i][:n], params)

        for i, p in enumerate(plans):
            add(
                f"f{i}-{stamp}",
                i,
                prompts[i],
                SamplingParams(temperature=0, max_tokens=p["max_tokens"], output_kind=RequestOutputKind.DELTA),
            )
        while live:
            for out in engine.step():
                if out.request_id not in live:
                    continue  # stopped by us
                i, o = live[out.request_id], out.outputs[0]
                if out.request_id.startswith("g"):  # a continuation under the grammar: ends the reply
                    if out.finished:
                        del live[out.request_id]
                        n, kept = prefix[i]
                        replies[i] = {
                            "raw": kept + o.text,
                            "finish_reason": o.finish_reason,
                            "output_tokens": n + len(o.token_ids),
                            "prompt_tokens": len(prompts[i]),
                            "cached_prompt_tokens": cached[i],
                        }
                    continue
                cached[i] = max(cached[i], out.num_cached_tokens or 0)
                tokens[i].extend(o.token_ids)
                left = False
                if o.text:
                    nxt = grammars[i].advance(state[i], o.text)
                    if nxt:
                        state[i], text[i], valid[i] = nxt, text[i] + o.text, len(tokens[i])
                    else:
                        left = True
                if not left and out.finished and o.finish_reason == "stop" and not grammars[i].complete(state[i]):
                    left = True  # ended where the grammar does not allow it to
                if left:
                    del live[out.request_id]
                    if not out.finished:
                        engine.abort_request([out.request_id])
                    fall_back(i)
                elif out.finished:
                    del live[out.request_id]
                    # cut by max_tokens inside the grammar: the grammar's decoding is cut at the same token
                    replies[i] = {
                        "raw": text[i],
                        "finish_reason": o.finish_reason,
                        "output_tokens": len(tokens[i]),
                        "prompt_tokens": len(prompts[i]),
                        "cached_prompt_tokens": cached[i],
                    }
        self.fallback_counts = {"free": len(plans) - len(fallen), "continued": len(fallen)}
        log.info("grammar fallback: %(free)d replies decoded free, %(continued)d continued under the grammar", self.fallback_counts)
        return [r if r is not None else {"raw": None, "finish_reason": "error", "error": "no reply"} for r in replies]
