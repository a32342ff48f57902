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
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from medner.inference.models import merged_model, on_cpu_build
from medner.prompts.contract import Plan, Reply
from medner.prompts.schema import ANSWER_SEPARATORS

# vLLM's xgrammar backend compiles JSON schemas with separators (",", ":") when whitespace is disabled:
# the answer format every stage uses. The assertion ties the two together.
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
    ):
        for k, v in cpu_env(kv_cache_gib).items():
            os.environ.setdefault(k, v)
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

    def generate(self, plans: Sequence[Plan], constrained: bool) -> list[Reply]:
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
