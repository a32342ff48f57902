"""``medner eval run``: a corpus split -> a backend -> predictions.jsonl -> score -> report.

The steps of :func:`run`: check every setting (collected, reported together), load the gold records, resume
what an earlier run of the same setup predicted, build the backend the settings name (from the registry of
:mod:`medner.inference.backends`: server, vllm, hf, ray, tokcls), ``predict()`` the rest, score, report.
Long records are windowed and stitched back by the backends: one prediction per record, joined on the ``id``.

Predictions are appended to ``predictions.jsonl`` as they finish; a run started again with the same
``out`` skips the records already there (a line cut short by a kill is discarded and redone).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

import yaml
from tqdm import tqdm

from medner.config import ConfigError, save_config
from medner.data.records import convert
from medner.data.registry import Corpus, RegistryError, get_corpus
from medner.eval.report import write_report
from medner.eval.score import score, throughput
from medner.files import open_private
from medner.inference.backends import REGISTRY, Backend, check_settings, make_backend
from medner.inference.settings import InferenceSettings
from medner.inference.token_tagger import read_tokcls_record
from medner.prompts.contract import resolve_grounded

log = logging.getLogger(__name__)


@dataclasses.dataclass
class EvalSettings(InferenceSettings):
    """The backend's settings (:class:`~medner.inference.settings.InferenceSettings`) and the run's."""

    corpus: str = "ncbi-disease"
    split: str = "test"
    # first N records (null = the whole split)
    limit: int | None = None
    # run folder: predictions.jsonl, report.json, report.md, per_type_f1.png, config.resolved.yaml
    out: str = "runs/eval"
    # bootstrap resamples for the confidence intervals
    bootstrap: int = 1000
    # reports without any text from the records (no snippets, no mention strings)
    no_text: bool = False
    # keep predictions.jsonl from an earlier, interrupted run with the same out
    resume: bool = True


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


def run(cfg: EvalSettings) -> dict:
    """One eval run, step by step; returns the report."""
    corpus = check(cfg)
    out = prepare_folder(cfg)
    gold = gold_records(cfg, corpus)
    pred_path = out / "predictions.jsonl"
    done = _load_done(pred_path, {r["id"] for r in gold}) if cfg.resume else {}
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
    # the backend is built only when there is something to predict, so a finished run can be rescored with the server down
    backend = make_backend(cfg, corpus, out) if todo else None
    wall = predict_into(backend, todo, pred_path) if backend else 0.0
    preds = _load_done(pred_path, {r["id"] for r in gold})
    report = score_run(cfg, corpus, gold, preds, todo, wall, backend, len(done))
    write_report(report, out, with_text=not cfg.no_text, records=gold, preds=preds)
    return report


def check(cfg: EvalSettings) -> Corpus:
    """Every setting checked before any data or model work; all the errors reported together."""
    errors = []
    try:
        corpus = get_corpus(cfg.corpus)
    except RegistryError as e:
        errors.append(str(e))
        corpus = None
    errors += check_settings(cfg, corpus)
    if errors:
        raise ConfigError("; ".join(errors))
    assert corpus is not None
    return corpus


def prepare_folder(cfg: EvalSettings) -> Path:
    """The run folder, refusing to resume another setup's predictions; the resolved settings saved in it."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    _check_same_setup(cfg, out)
    save_config(cfg, out / "config.resolved.yaml")
    return out


def gold_records(cfg: EvalSettings, corpus: Corpus) -> list[dict]:
    gold = convert(corpus, cfg.split)
    return gold[: cfg.limit] if cfg.limit else gold


def predict_into(backend: Backend, todo: list[dict], pred_path: Path) -> float:
    """The backend's predictions appended to ``pred_path`` as they come; returns the prediction wall time."""
    with open_private(pred_path, "a") as fh, tqdm(total=len(todo), desc="records", unit="rec") as bar:

        def write(res: dict) -> None:
            fh.write(json.dumps(res, ensure_ascii=False) + "\n")
            fh.flush()
            bar.update(1)

        return backend.predict(todo, write)


def score_run(
    cfg: EvalSettings, corpus: Corpus, gold: list[dict], preds: dict, todo: list[dict], wall: float, backend: Backend | None, resumed: int
) -> dict:
    """seqeval strict and the failure counts, with the throughput of this run's predictions and its setup."""
    report = score(gold, preds, bootstrap=cfg.bootstrap, with_text=not cfg.no_text)
    fresh = [preds[r["id"]] for r in todo if r["id"] in preds]
    report["throughput"] = throughput(fresh, wall if fresh else None)
    if report["throughput"]:
        report["throughput"]["backend"] = cfg.backend
    generative = REGISTRY[cfg.backend].generative
    report["run"] = {
        "corpus": corpus.name,
        "split": cfg.split,
        "backend": cfg.backend,
        "constrained": cfg.constrained if generative else None,
        "grounded": resolve_grounded(cfg.grounded, cfg.constrained, cfg.backend) or False,
        "prompt_version": (backend.prompt_version if backend else None) or cfg.prompt_version,
        "model": cfg.served_model if cfg.backend == "server" else cfg.model,
        "adapter": cfg.adapter,
        "resumed_records": resumed,
    }
    if cfg.backend == "tokcls":
        report["run"]["tokcls_decode"] = (
            getattr(backend, "decode", None) or cfg.tokcls_decode or read_tokcls_record(cfg.adapter or "").get("decode", "argmax")
        )
    return report
