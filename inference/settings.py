"""The settings every backend is configured from: one dataclass, one default each (``medner eval run`` adds
the corpus, split and run folder; the defaults of window and context come from the data and prompt layers)."""

from __future__ import annotations

import dataclasses

from medner.data.windows import WINDOW_TOKENS
from medner.prompts.contract import MAX_MODEL_LEN


@dataclasses.dataclass
class InferenceSettings:
    """What every backend is configured from (``medner eval run`` adds the corpus, split and run folder)."""

    # server | vllm | hf | ray (generative) | tokcls (a `medner tokcls train` run: adapter=<run>/adapter)
    backend: str = "server"
    # server backend: the OpenAI-compatible base URL and the served model name ("ner" = adapter, "base" = zero-shot);
    # ray backend: one or several URLs, comma-separated (null with model=: vLLM inside the Ray actors)
    url: str | None = "http://127.0.0.1:8000/v1"
    served_model: str = "ner"
    api_key: str | None = None
    # vllm / hf backends: the base model (folder, .gguf or Hub id) and the adapter folder (null = zero-shot);
    # tokcls: the run's adapter folder, and the base (null = the one named in its run record)
    model: str | None = None
    adapter: str | None = None
    # vllm / hf backends: merge the adapter into the base once (cached) and run the merged model.
    # auto = merge on a CPU-only machine (LoRA there is slow, and vLLM's CPU build mixes base and adapter
    # requests), keep LoRA on CUDA. true / false force it.
    merge: bool | str = "auto"
    # prompt templates (null = the adapter's trained version from its run record, or the served model's; v1
    # for a base model). Another version than the trained one is refused.
    prompt_version: str | None = None
    # schema-constrained decoding (false: free decoding, to see whether the model learned the format)
    constrained: bool = True
    # grounded decoding (needs constrained): every mention is a span of the input, by construction.
    # true = ordered (each mention after the previous one: no repeats beyond the text, no overlaps),
    # substring (any span, any order), false = the plain schema; null (default) = ordered wherever it
    # applies (constrained decoding on a generative backend), off for free decoding and tokcls
    grounded: bool | str | None = None
    # requests in flight (server) / records per generate call (hf) / records per engine call (vllm)
    concurrency: int = 16
    batch_size: int = 16
    window_tokens: int = WINDOW_TOKENS
    max_model_len: int = MAX_MODEL_LEN
    # cap on max_tokens per request (null = the schema-derived bound)
    max_tokens: int | None = None
    # vllm backend: CPU KV cache (GiB) and prefix caching of the shared instruction
    kv_cache_gib: int = 2
    enable_prefix_caching: bool = True
    # vllm backend: KV-cache block size in tokens (null = 32 on a CPU-only machine, vLLM's default on CUDA)
    block_size: int | None = None
    # vllm backend: skip torch.compile (the tiny test model starts ~30 s sooner on a CPU; real models keep it)
    enforce_eager: bool = False
    # vllm backend, greedy grammar-constrained (grounded) decoding: decode free, check each reply against the
    # grammar as it grows, and continue under the grammar only from the first token that leaves it. The same
    # replies as masking every step (greedy picks the same token wherever the grammar allows the model's own
    # choice), without the mask's cost where the model stays inside (medner.prompts.grammar_prefix)
    grammar_fallback: bool = True
    # ray backend: an existing Ray cluster (null = start a local one), records per shard, actors
    ray_address: str | None = None
    ray_shard_records: int = 256
    ray_workers: int | None = None
    # tokcls backend: argmax (+ CoNLL repair) | viterbi (BIO-valid best path); null = as the run was trained
    tokcls_decode: str | None = None
