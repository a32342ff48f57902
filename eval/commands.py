"""`medner eval run|score|compare`."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from medner.config import load_config
from medner.data.formats import write_tool_format
from medner.data.records import convert, read_jsonl
from medner.data.registry import get_corpus
from medner.eval.compare import compare
from medner.eval.run import EvalSettings, run


def _run(a: argparse.Namespace) -> int:
    run(load_config(EvalSettings, a.config, a.overrides))
    return 0


def _score(a: argparse.Namespace) -> int:
    from medner.eval.report import write_report
    from medner.eval.score import load_predictions, score

    gold = []
    for lineno, obj in read_jsonl(a.gold):
        missing = [k for k in ("id", "text", "tokens", "token_offsets", "entities") if k not in obj]
        if missing:
            raise ValueError(f"{a.gold}:{lineno}: gold record lacks {', '.join(missing)} (use `medner data convert` records)")
        gold.append(obj)
    preds = load_predictions(a.pred, {r["id"] for r in gold})
    report = score(gold, preds, bootstrap=a.bootstrap, with_text=not a.no_text)
    missing = report["failures"]["missing"]["count"]
    if missing:
        print(f"note: {missing} gold record(s) have no prediction; scored as no entities")
    write_report(report, a.out, with_text=not a.no_text, records=gold, preds=preds)
    return 0


def _export(a: argparse.Namespace) -> int:
    run = Path(a.run_dir)
    if not (run / "predictions.jsonl").is_file():
        raise ValueError(f"{run}: no predictions.jsonl (an eval run folder)")
    preds = [obj for _, obj in read_jsonl(run / "predictions.jsonl")]
    gold = None
    cfg = yaml.safe_load((run / "config.resolved.yaml").read_text()) if (run / "config.resolved.yaml").is_file() else {}
    if cfg.get("corpus") and cfg.get("split"):
        gold = {r["id"]: r for r in convert(get_corpus(cfg["corpus"]), cfg["split"])}
    out = Path(a.out or run / f"export-{a.format}")
    if a.format != "brat" and not a.out:
        out = out.with_suffix(".json" if a.format == "labelstudio" else ".jsonl")
    write_tool_format(preds, a.format, out, gold)
    print(
        f"wrote {len(preds)} predictions ({'with gold as a second annotation set' if gold and a.format == 'labelstudio' else 'predictions only'}) to {out}"
    )
    return 0


def _compare(a: argparse.Namespace) -> int:
    print(compare(a.run_a, a.run_b))
    return 0


def add_eval_commands(stages) -> None:
    ev = stages.add_parser("eval", help="the eval harness").add_subparsers(dest="action", required=True)
    r = ev.add_parser("run", help="predict a corpus split with a backend and score it")
    r.add_argument("--config", required=True)
    r.add_argument("overrides", nargs="*", help="key=value (backend= url= model= adapter= corpus= split= limit= out= ...)")
    r.set_defaults(func=_run)
    s = ev.add_parser("score", help="score predictions against gold records")
    s.add_argument("--gold", required=True, help="records JSONL from `medner data convert`")
    s.add_argument("--pred", required=True, help="predictions JSONL: id + entities (text, type, start/end when known)")
    s.add_argument("--out", default="runs/score", help="report folder")
    s.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the confidence intervals")
    s.add_argument("--no-text", action="store_true", help="reports without any text from the records")
    s.set_defaults(func=_score)
    x = ev.add_parser("export", help="an eval run's predictions for review in Label Studio, Doccano or brat")
    x.add_argument("run_dir")
    x.add_argument("--format", required=True, choices=["labelstudio", "doccano", "brat"])
    x.add_argument("--out", help="file (labelstudio, doccano) or folder (brat); default: <run_dir>/export-<format>")
    x.set_defaults(func=_export)
    c = ev.add_parser("compare", help="two runs side by side")
    c.add_argument("run_a")
    c.add_argument("run_b")
    c.set_defaults(func=_compare)
