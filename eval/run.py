"""``medner eval run``: a corpus split -> an extraction backend -> predictions.jsonl -> report.

Backends (``backend=``):

* ``server``  an OpenAI-compatible endpoint (the vLLM server of ``make serve``), concurrent requests;
* ``vllm``    vLLM's offline engine in-process (``vllm.LLM``) with the adapter, batched, same schema;
* ``hf``      plain transformers ``generate`` (batched), schema-constrained through xgrammar's
              transformers integration (``constrained=false`` says plainly that output is free).

All three build requests with the same planner (windows, bounded schema, ``max_tokens``) and parse
replies with the same code, so they differ only in how tokens are produced. Long records are windowed
and stitched back, so there is one prediction per record, joined on the record ``id``.

Predictions are appended to ``predictions.jsonl`` as they finish; a run started again with the same
``out`` skips the records already there (a line cut short by a kill is discarded and redone).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path

from medner.config import ConfigError, save_config

log = logging.getLogger(__name__)


@dataclasses.dataclass
class EvalSettings:
    # server | vllm | hf
    backend: str = "server"
    # server backend: the OpenAI-compatible base URL and the served model name ("ner" = adapter, "base" = zero-shot)
    url: str = "http://127.0.0.1:8000/v1"
    served_model: str = "ner"
    api_key: str | None = None
    # vllm / hf backends: the base model (folder, .gguf or Hub id) and the adapter folder (null = zero-shot)
    model: str | None = None
    adapter: str | None = None
    corpus: str = "ncbi-disease"
    split: str = "test"
    # first N records (null = the whole split)
    limit: int | None = None
    # run folder: predictions.jsonl, report.json, report.md, per_type_f1.png, config.resolved.yaml
    out: str = "runs/eval"
    # schema-constrained decoding (false: free decoding, to see whether the model learned the format)
    constrained: bool = True
    # requests in flight (server) / records per generate call (hf) / records per engine call (vllm)
    concurrency: int = 16
    batch_size: int = 16
    window_tokens: int = 256
    max_model_len: int = 8192
    # cap on max_tokens per request (null = the schema-derived bound)
    max_tokens: int | None = None
    # vllm backend: CPU KV cache (GiB) and prefix caching of the shared instruction
    kv_cache_gib: int = 2
    enable_prefix_caching: bool = True
    # bootstrap resamples for the confidence intervals
    bootstrap: int = 1000
    # reports without any text from the records (no snippets, no mention strings)
    no_text: bool = False
    # keep predictions.jsonl from an earlier, interrupted run with the same out
    resume: bool = True


def _load_done(path: Path, valid_ids: set[str]) -> dict[str, dict]:
    """Predictions already written; a torn last line (killed mid-write) is dropped from the file."""
    done: dict[str, dict] = {}
    if not path.is_file():
        return done
    good_lines = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if obj.get("id") in valid_ids:
                done[obj["id"]] = obj
                good_lines.append(line if line.endswith("\n") else line + "\n")
    path.write_text("".join(good_lines), encoding="utf-8")
    return done


# what must not change between a run and its resumption (limit, concurrency and the like may)
SETUP_KEYS = ("backend", "url", "served_model", "model", "adapter", "corpus", "split", "constrained", "window_tokens", "max_tokens")


def _check_same_setup(cfg: EvalSettings, out: Path) -> None:
    """Refuse to resume predictions that another setup wrote into the same folder."""
    import yaml

    old_path = out / "config.resolved.yaml"
    if not (cfg.resume and old_path.is_file() and (out / "predictions.jsonl").is_file()):
        return
    old = yaml.safe_load(old_path.read_text(encoding="utf-8")) or {}
    changed = [k for k in SETUP_KEYS if k in old and old[k] != getattr(cfg, k)]
    if changed:
        raise ConfigError(
            f"{out} holds predictions of another setup ({', '.join(f'{k}: {old[k]!r} -> {getattr(cfg, k)!r}' for k in changed)}); "
            "use another out=, or resume=false to start over"
        )


def _task(cfg: EvalSettings):
    from medner.data.registry import get_corpus
    from medner.serve.client import task_for

    corpus = get_corpus(cfg.corpus)
    return corpus, task_for(corpus)


def _check_adapter(cfg: EvalSettings, corpus, model_dir: Path | None) -> None:
    if cfg.adapter:
        from medner.runrecord import check_adapter

        check_adapter(cfg.adapter, model_dir, corpus)


def run_server(cfg: EvalSettings, records: list[dict], task, write) -> float:
    """Returns the wall time of the predictions (after the server check)."""
    import asyncio

    from medner.serve.client import ExtractClient

    client = ExtractClient(cfg.url, cfg.served_model, api_key=cfg.api_key or os.environ.get("MEDNER_API_KEY"),
                           concurrency=cfg.concurrency, window_tokens=cfg.window_tokens, constrained=cfg.constrained,
                           max_tokens_cap=cfg.max_tokens)
    client.check_server()
    items = [{"id": r["id"], "text": r["text"], "token_offsets": r["token_offsets"]} for r in records]
    t0 = time.perf_counter()
    asyncio.run(client.extract_many(items, task, progress=True, on_result=lambda i, res: write(res)))
    return time.perf_counter() - t0


def _plans_for(cfg: EvalSettings, records: list[dict], task, tokenizer):
    from medner.serve.client import plan_requests

    return [plan_requests(r["text"], [tuple(o) for o in r["token_offsets"]], task, cfg.window_tokens, tokenizer,
                          cfg.max_model_len, cfg.constrained, cfg.max_tokens) if r["text"].strip() else [] for r in records]


def _emit(records, all_plans, replies_flat, latency_of, write) -> None:
    from medner.serve.client import assemble_result

    k = 0
    for rec, plans in zip(records, all_plans):
        reps = replies_flat[k : k + len(plans)]
        k += len(plans)
        res = {"id": rec["id"], "text": rec["text"], **assemble_result(rec["text"], plans, reps)} if plans else {
            "id": rec["id"], "text": rec["text"], "entities": [], "dropped": [], "status": "ok", "finish_reason": "stop", "raw": [], "windows": 0, "output_tokens": 0}
        res["latency_s"] = latency_of(rec)
        write(res)


def run_vllm(cfg: EvalSettings, records: list[dict], task, write, model_dir: Path) -> float:
    """Returns the wall time of the predictions, after the engine has started."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cfg.kv_cache_gib))
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest
    from vllm.sampling_params import StructuredOutputsParams

    kwargs = {}
    if cfg.adapter:
        rank = json.loads((Path(cfg.adapter) / "adapter_config.json").read_text())["r"]
        kwargs.update(enable_lora=True, max_lora_rank=max(8, rank))
    llm = LLM(model=str(model_dir), max_model_len=cfg.max_model_len, dtype="bfloat16", enable_prefix_caching=cfg.enable_prefix_caching,
              structured_outputs_config={"backend": "xgrammar", "disable_any_whitespace": True}, generation_config="vllm", **kwargs)
    tokenizer = llm.get_tokenizer()
    lora = LoRARequest("ner", 1, str(Path(cfg.adapter).resolve())) if cfg.adapter else None
    t0 = time.perf_counter()
    for start in range(0, len(records), cfg.batch_size):
        chunk = records[start : start + cfg.batch_size]
        plans = _plans_for(cfg, chunk, task, tokenizer)
        flat = [p for ps in plans for p in ps]
        params = [
            SamplingParams(temperature=0, max_tokens=p["max_tokens"],
                           structured_outputs=StructuredOutputsParams(json=p["schema"]) if cfg.constrained else None)
            for p in flat
        ]
        t = time.perf_counter()
        outs = llm.chat([p["messages"] for p in flat], params, use_tqdm=False, lora_request=lora) if flat else []
        dt = time.perf_counter() - t
        replies = [{"raw": o.outputs[0].text, "finish_reason": o.outputs[0].finish_reason, "output_tokens": len(o.outputs[0].token_ids)} for o in outs]
        _emit(chunk, plans, replies, lambda r: dt, write)
    return time.perf_counter() - t0


def run_hf(cfg: EvalSettings, records: list[dict], task, write, model_dir: Path) -> float:
    """Returns the wall time of the predictions, after the model has loaded."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from medner.hfgen import generate_batch

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.bfloat16)
    if torch.cuda.is_available():
        model = model.to("cuda")
    if cfg.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, cfg.adapter)
    model.eval()
    if not cfg.constrained:
        log.warning("hf backend with constrained=false: output is unconstrained (free decoding)")
    t0 = time.perf_counter()
    for start in range(0, len(records), cfg.batch_size):
        chunk = records[start : start + cfg.batch_size]
        plans = _plans_for(cfg, chunk, task, tokenizer)
        flat = [p for ps in plans for p in ps]
        t = time.perf_counter()
        replies = generate_batch(model, tokenizer, [p["messages"] for p in flat], [p["max_tokens"] for p in flat],
                                 [p["schema"] for p in flat] if cfg.constrained else None) if flat else []
        dt = time.perf_counter() - t
        _emit(chunk, plans, replies, lambda r: dt, write)
    return time.perf_counter() - t0


def run(cfg: EvalSettings) -> dict:
    from tqdm import tqdm

    from medner.data.records import convert
    from medner.eval.report import write_report
    from medner.eval.score import score, throughput

    if cfg.backend not in ("server", "vllm", "hf"):
        raise ConfigError(f"backend must be server, vllm or hf, not {cfg.backend!r}")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    _check_same_setup(cfg, out)
    save_config(cfg, out / "config.resolved.yaml")
    corpus, task = _task(cfg)
    gold = convert(corpus, cfg.split)
    if cfg.limit:
        gold = gold[: cfg.limit]
    model_dir = None
    if cfg.backend in ("vllm", "hf"):
        if not cfg.model:
            raise ConfigError(f"backend={cfg.backend} needs model=PATH (the base model)")
        from medner.sft.models import resolve_model

        model_dir = resolve_model(cfg.model)
    _check_adapter(cfg, corpus, model_dir)
    pred_path = out / "predictions.jsonl"
    ids = {r["id"] for r in gold}
    done = _load_done(pred_path, ids) if cfg.resume else {}
    if not cfg.resume and pred_path.exists():
        pred_path.unlink()
    todo = [r for r in gold if r["id"] not in done]
    log.info("%s %s: %d records, %d already predicted, %d to go (backend %s)", corpus.name, cfg.split, len(gold), len(done), len(todo), cfg.backend)
    fh = pred_path.open("a", encoding="utf-8")
    bar = tqdm(total=len(todo), desc="records", unit="rec", disable=cfg.backend == "server")

    def write(res: dict) -> None:
        fh.write(json.dumps(res, ensure_ascii=False) + "\n")
        fh.flush()
        bar.update(1)

    wall = 0.0  # prediction time only: model loading and engine start are not part of throughput
    try:
        if todo:
            if cfg.backend == "server":
                wall = run_server(cfg, todo, task, write)
            elif cfg.backend == "vllm":
                wall = run_vllm(cfg, todo, task, write, model_dir)
            else:
                wall = run_hf(cfg, todo, task, write, model_dir)
    finally:
        fh.close()
        bar.close()
    preds = _load_done(pred_path, ids)
    report = score(gold, preds, bootstrap=cfg.bootstrap, with_text=not cfg.no_text)
    fresh = [preds[r["id"]] for r in todo if r["id"] in preds]
    report["throughput"] = throughput(fresh, wall if fresh else None)
    if report["throughput"]:
        report["throughput"]["backend"] = cfg.backend
    report["run"] = {"corpus": corpus.name, "split": cfg.split, "backend": cfg.backend, "constrained": cfg.constrained,
                     "model": cfg.served_model if cfg.backend == "server" else cfg.model, "adapter": cfg.adapter, "resumed_records": len(done)}
    write_report(report, out, with_text=not cfg.no_text)
    return report
