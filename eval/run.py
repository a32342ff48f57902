"""``medner eval run``: a corpus split -> an extraction backend -> predictions.jsonl -> report.

Backends (``backend=``, see :mod:`medner.eval.backends`):

* ``server``  an OpenAI-compatible endpoint (the vLLM server of ``make serve``), concurrent requests;
* ``vllm``    vLLM's offline engine in-process (``vllm.LLM``), same engine settings as the server;
* ``hf``      plain transformers ``generate`` (batched), schema-constrained through xgrammar with the
              same answer format (``constrained=false`` says plainly that output is free);
* ``ray``     Ray Data actors over a pool of servers (``url``: one or several, comma-separated) or holding
              vLLM themselves (``model`` + ``adapter``), see :mod:`medner.eval.ray_extract`; shards resume;
* ``tokcls``  a token-classification run (``medner tokcls train``): one forward pass per window, BIO tags
              decoded to spans (:mod:`medner.tokcls`); no prompts, no decoding constraint.

The three generative backends run through one loop (:func:`medner.eval.backends.predict`): the same planner (windows,
bounded schema, ``max_tokens``) and the same parser, so they differ only in how tokens are produced.
Long records are windowed and stitched back: one prediction per record, joined on the record ``id``.

Predictions are appended to ``predictions.jsonl`` as they finish; a run started again with the same
``out`` skips the records already there (a line cut short by a kill is discarded and redone).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

from medner.config import ConfigError, save_config
from medner.files import open_private

log = logging.getLogger(__name__)


@dataclasses.dataclass
class EvalSettings:
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
    corpus: str = "ncbi-disease"
    # prompt templates (null = the adapter's trained version from its run record, or the served model's; v1
    # for a base model). Another version than the trained one is refused.
    prompt_version: str | None = None
    split: str = "test"
    # first N records (null = the whole split)
    limit: int | None = None
    # run folder: predictions.jsonl, report.json, report.md, per_type_f1.png, config.resolved.yaml
    out: str = "runs/eval"
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
    window_tokens: int = 256
    max_model_len: int = 8192
    # cap on max_tokens per request (null = the schema-derived bound)
    max_tokens: int | None = None
    # vllm backend: CPU KV cache (GiB) and prefix caching of the shared instruction
    kv_cache_gib: int = 2
    enable_prefix_caching: bool = True
    # vllm backend: KV-cache block size in tokens (null = 32 on a CPU-only machine, vLLM's default on CUDA)
    block_size: int | None = None
    # bootstrap resamples for the confidence intervals
    bootstrap: int = 1000
    # reports without any text from the records (no snippets, no mention strings)
    no_text: bool = False
    # keep predictions.jsonl from an earlier, interrupted run with the same out
    resume: bool = True
    # ray backend: an existing Ray cluster (null = start a local one), records per shard, actors
    ray_address: str | None = None
    ray_shard_records: int = 256
    ray_workers: int | None = None
    # tokcls backend: argmax (+ CoNLL repair) | viterbi (BIO-valid best path); null = as the run was trained
    tokcls_decode: str | None = None


def _load_done(path: Path, valid_ids: set[str]) -> dict[str, dict]:
    """Predictions already written for ``valid_ids``. A torn last line (killed mid-write) is dropped from the
    file, which is rewritten atomically; predictions of other records (a larger ``limit`` earlier) are kept."""
    done: dict[str, dict] = {}
    if not path.is_file():
        return done
    good_lines, torn = [], 0
    with path.open(encoding="utf-8") as f:
        for line in f:
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                torn += 1
                continue
            torn += not line.endswith("\n")
            if obj.get("id") in valid_ids:
                done[obj["id"]] = obj
            good_lines.append(line if line.endswith("\n") else line + "\n")
    if torn:
        tmp = path.with_name(path.name + ".tmp")
        with open_private(tmp) as fh:
            fh.write("".join(good_lines))
        os.replace(tmp, path)
    return done


# what must not change between a run and its resumption (limit, concurrency and the like may)
SETUP_KEYS = (
    "backend",
    "url",
    "served_model",
    "model",
    "adapter",
    "corpus",
    "prompt_version",
    "split",
    "constrained",
    "grounded",
    "window_tokens",
    "max_tokens",
    "merge",
)


def _check_same_setup(cfg: EvalSettings, out: Path) -> None:
    """Refuse to resume predictions that another setup wrote into the same folder."""
    import yaml

    from medner.prompts.contract import resolve_grounded

    old_path = out / "config.resolved.yaml"
    if not (cfg.resume and old_path.is_file() and (out / "predictions.jsonl").is_file()):
        return
    old = yaml.safe_load(old_path.read_text(encoding="utf-8")) or {}
    new = {k: getattr(cfg, k) for k in SETUP_KEYS}
    if "grounded" in old:  # the mode in effect, so `null` (the default) resumes a run that wrote it out
        old["grounded"] = resolve_grounded(old["grounded"], old.get("constrained", True), old.get("backend", "server"))
        new["grounded"] = resolve_grounded(cfg.grounded, cfg.constrained, cfg.backend)
    changed = [k for k in SETUP_KEYS if k in old and old[k] != new[k]]
    if changed:
        raise ConfigError(
            f"{out} holds predictions of another setup ({', '.join(f'{k}: {old[k]!r} -> {new[k]!r}' for k in changed)}); "
            "use another out=, or resume=false to start over"
        )


def _task(cfg: EvalSettings, corpus, model_dir: Path | None, server=None):
    """The task, with the prompt version the model was trained with (checked against its run record;
    ``server``: the server backend, whose served folder may carry the record)."""
    from medner.prompts.contract import task_for
    from medner.runrecord import check_adapter, prompt_version_for

    if cfg.adapter:
        version = check_adapter(cfg.adapter, model_dir, corpus, cfg.prompt_version)["prompt_version"]
    elif server is not None:
        version = server.client.task_version(cfg.prompt_version)  # the backend has checked the server already
    else:
        version = prompt_version_for(cfg.prompt_version, None, str(cfg.model))
    return task_for(corpus, prompt_version=version)


def make_backend(cfg: EvalSettings, model_dir: Path | None):
    """The backend the settings name, loaded and ready (model load / engine start happen here)."""
    from medner.engine import resolve_merge
    from medner.eval.backends import HFBackend, ServerBackend, VLLMBackend

    if cfg.backend == "server":
        from medner.serve.client import ExtractClient

        client = ExtractClient(
            cfg.url,
            cfg.served_model,
            api_key=cfg.api_key or os.environ.get("MEDNER_API_KEY"),
            concurrency=cfg.concurrency,
            window_tokens=cfg.window_tokens,
            constrained=cfg.constrained,
            max_tokens_cap=cfg.max_tokens,
        )
        return ServerBackend(client)
    if cfg.backend == "vllm":
        return VLLMBackend(
            model_dir,
            cfg.adapter,
            cfg.merge,
            cfg.max_model_len,
            cfg.batch_size,
            cfg.enable_prefix_caching,
            cfg.kv_cache_gib,
            cfg.block_size,
        )
    if not cfg.constrained:
        log.warning("hf backend with constrained=false: output is unconstrained (free decoding)")
    return HFBackend.load(model_dir, cfg.adapter, resolve_merge(cfg.merge), cfg.batch_size, cfg.max_model_len)


def _predict_tokcls(cfg: EvalSettings, corpus, records: list[dict], write) -> float:
    """Token classification over the records, in chunks; returns the wall time of tagging (model loading excluded)."""
    import time

    from medner.tokcls import TokenTagger

    if not cfg.adapter:
        raise ConfigError("backend=tokcls needs adapter=RUN_ADAPTER_DIR (a `medner tokcls train` run)")
    tagger = TokenTagger.load(cfg.adapter, cfg.model, corpus.name, batch_size=cfg.batch_size, decode=cfg.tokcls_decode)
    tagger.tag_records(records[:1])  # warm-up, untimed, as every backend gets
    t0 = time.perf_counter()
    step = max(1, 4 * cfg.batch_size)
    for start in range(0, len(records), step):
        chunk = records[start : start + step]
        t = time.perf_counter()
        results = tagger.tag_records(chunk)
        took = time.perf_counter() - t
        for rec, res in zip(chunk, results):
            write({"id": rec["id"], "text": rec["text"], **res, "latency_s": took})
    return time.perf_counter() - t0


def _predict_ray(cfg: EvalSettings, corpus, records: list[dict], write, out: Path, grounded) -> float:
    """The records through Ray Data (:mod:`medner.eval.ray_extract`): written as JSONL with their gold tokens,
    extracted shard by shard (a rerun completes the missing shards), read back in order."""
    import hashlib
    import shutil
    import time

    from medner.eval import ray_extract

    inp, parts = out / "ray-input.jsonl", out / "ray-parts"
    content = "".join(
        json.dumps({"id": r["id"], "text": r["text"], "token_offsets": r["token_offsets"]}, ensure_ascii=False) + "\n" for r in records
    )
    manifest = parts / ray_extract.MANIFEST
    if manifest.is_file() and json.loads(manifest.read_text())["sha256"] != hashlib.sha256(content.encode()).hexdigest():
        shutil.rmtree(parts)  # shards of an earlier set of records still to do: their results are in predictions.jsonl already
    inp.write_text(content, encoding="utf-8")
    urls = [u for u in (cfg.url or "").split(",") if u]
    t0 = time.perf_counter()
    ray_extract.run(
        str(inp),
        str(parts),
        {"corpus": corpus.name},
        urls=urls or None,
        model=cfg.served_model,
        base_model=None if urls else cfg.model,
        adapter=None if urls else cfg.adapter,
        address=cfg.ray_address,
        shard_records=cfg.ray_shard_records,
        workers=cfg.ray_workers,
        api_key=cfg.api_key or os.environ.get("MEDNER_API_KEY"),
        concurrency=cfg.concurrency,
        window_tokens=cfg.window_tokens,
        grounded=grounded,
        raw=True,
    )
    wall = time.perf_counter() - t0
    for part in sorted(parts.glob("part-*.jsonl")):
        for line in part.read_text(encoding="utf-8").splitlines():
            write(json.loads(line))
    return wall


def run(cfg: EvalSettings) -> dict:
    from tqdm import tqdm

    from medner.data.records import convert
    from medner.eval.report import write_report
    from medner.eval.score import score, throughput

    if cfg.backend not in ("server", "vllm", "hf", "ray", "tokcls"):
        raise ConfigError(f"backend must be server, vllm, hf, ray or tokcls, not {cfg.backend!r}")
    if cfg.tokcls_decode not in (None, "argmax", "viterbi"):
        raise ConfigError(f"tokcls_decode must be argmax, viterbi or null (as trained), not {cfg.tokcls_decode!r}")
    from medner.engine import resolve_merge
    from medner.prompts.contract import resolve_grounded

    try:
        resolve_merge(cfg.merge)
        grounded = resolve_grounded(cfg.grounded, cfg.constrained, cfg.backend)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if cfg.backend == "tokcls":
        if not cfg.adapter:
            raise ConfigError("backend=tokcls needs adapter=DIR (the adapter folder of a `medner tokcls train` run)")
        if grounded:
            raise ConfigError(
                "grounded=true applies to generative backends; token classification spans are spans of the input by construction"
            )
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    _check_same_setup(cfg, out)
    save_config(cfg, out / "config.resolved.yaml")
    from medner.data.registry import get_corpus

    corpus = get_corpus(cfg.corpus)
    gold = convert(corpus, cfg.split)
    if cfg.limit:
        gold = gold[: cfg.limit]
    model_dir = None
    if cfg.backend == "tokcls":
        from medner.tokcls import TokClsError, read_tokcls_record

        try:
            tok_rec = read_tokcls_record(cfg.adapter or "")
        except TokClsError as e:
            raise ConfigError(str(e)) from None
        if tok_rec["corpus"] != corpus.name:
            raise ConfigError(
                f"{cfg.adapter}: trained on {tok_rec['corpus']!r}, not on {corpus.name!r}: its tag set is {tok_rec['labels']}"
            )
    elif cfg.backend == "ray" and not cfg.url and not cfg.model:
        raise ConfigError("backend=ray needs url= (servers, comma-separated) or model= (vLLM inside the Ray actors)")
    elif cfg.backend in ("vllm", "hf") or (cfg.backend == "ray" and not cfg.url):
        if not cfg.model:
            raise ConfigError(f"backend={cfg.backend} needs model=PATH (the base model)")
        from medner.models import resolve_model

        model_dir = resolve_model(cfg.model)
    # the adapter is checked now; a server (without a local adapter) is asked for its prompt version only when
    # there is something to predict, so a finished run can be rescored with the server down
    task = _task(cfg, corpus, model_dir) if cfg.backend not in ("tokcls", "ray") and (cfg.adapter or cfg.backend != "server") else None
    pred_path = out / "predictions.jsonl"
    ids = {r["id"] for r in gold}
    done = _load_done(pred_path, ids) if cfg.resume else {}
    if not cfg.resume and pred_path.exists():
        pred_path.unlink()
    todo = [r for r in gold if r["id"] not in done]
    log.info(
        "%s %s: %d records, %d already predicted, %d to go (backend %s)",
        corpus.name,
        cfg.split,
        len(gold),
        len(done),
        len(todo),
        cfg.backend,
    )
    fh = open_private(pred_path, "a")
    bar = tqdm(total=len(todo), desc="records", unit="rec")

    def write(res: dict) -> None:
        fh.write(json.dumps(res, ensure_ascii=False) + "\n")
        fh.flush()
        bar.update(1)

    wall = 0.0  # prediction time only: model loading and engine start are not part of throughput
    try:
        if todo and cfg.backend == "tokcls":
            wall = _predict_tokcls(cfg, corpus, todo, write)
        elif todo and cfg.backend == "ray":
            wall = _predict_ray(cfg, corpus, todo, write, out, grounded)
        elif todo:
            from medner.eval.backends import predict

            backend = make_backend(cfg, model_dir)
            task = task or _task(cfg, corpus, model_dir, backend)
            wall = predict(backend, todo, task, write, cfg.window_tokens, cfg.constrained, cfg.max_tokens, grounded=grounded)
    finally:
        fh.close()
        bar.close()
    preds = _load_done(pred_path, ids)
    report = score(gold, preds, bootstrap=cfg.bootstrap, with_text=not cfg.no_text)
    fresh = [preds[r["id"]] for r in todo if r["id"] in preds]
    report["throughput"] = throughput(fresh, wall if fresh else None)
    if report["throughput"]:
        report["throughput"]["backend"] = cfg.backend
    report["run"] = {
        "corpus": corpus.name,
        "split": cfg.split,
        "backend": cfg.backend,
        "constrained": cfg.constrained if cfg.backend != "tokcls" else None,
        "grounded": grounded or False,
        "prompt_version": task.prompt_version if task else cfg.prompt_version,
        "model": cfg.served_model if cfg.backend == "server" else cfg.model,
        "adapter": cfg.adapter,
        "resumed_records": len(done),
    }
    if cfg.backend == "tokcls":
        report["run"]["tokcls_decode"] = cfg.tokcls_decode or tok_rec.get("decode", "argmax")
    write_report(report, out, with_text=not cfg.no_text, records=gold, preds=preds)
    return report
