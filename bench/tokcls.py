"""The classic baseline: Qwen2.5 + LoRA token classification, trained on this machine and scored on the full
test split with the same scorer as the generative runs. Recorded as ``<corpus>-tokcls`` (f1, test_records,
train_examples, train_wall_s, records_per_s).

    python -m bench.tokcls --model PATH --corpus ncbi-disease [--max-train-examples 2000] [--budget-s 3600]
        [--config sft/configs/tokcls-qwen2.5-0.5b-cpu.yaml] [--override key=value ...]

Interrupt it at any time and run the same command again: training resumes from its last checkpoint, a
finished test evaluation is reused.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from bench.common import ROOT, medner, report, write_result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="base model folder or .gguf")
    ap.add_argument("--model-name", default="Qwen2.5-Coder-0.5B-Instruct (official Q4_K_M GGUF, dequantized to bf16)")
    ap.add_argument("--corpus", default="ncbi-disease")
    ap.add_argument("--config", default=str(ROOT / "sft/configs/tokcls-qwen2.5-0.5b-cpu.yaml"))
    ap.add_argument("--max-train-examples", type=int, help="seeded subset of training windows (default: all)")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--budget-s", type=float, help="stop training after this many seconds (max_train_wall_s)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--limit", type=int, help="first N test records only (default: the full split)")
    ap.add_argument("--run-dir", default="runs/bench")
    ap.add_argument("--name", help="run folder name (default: tokcls-<corpus>)")
    ap.add_argument("--override", action="append", default=[], help="extra key=value for `medner tokcls train` (repeatable)")
    a = ap.parse_args()
    run = Path(a.run_dir) / (a.name or f"tokcls-{a.corpus}")
    run.mkdir(parents=True, exist_ok=True)
    log = run / "bench.log"
    if not (run / "summary.json").is_file():
        medner(
            "tokcls",
            "train",
            "--config",
            a.config,
            f"model={a.model}",
            f"corpora=[{a.corpus}]",
            f"output_dir={run}",
            f"max_train_examples={a.max_train_examples if a.max_train_examples else 'null'}",
            f"num_epochs={a.epochs}",
            *([f"max_train_wall_s={a.budget_s}"] if a.budget_s else []),
            *a.override,
            log=log,
        )
    summary = json.loads((run / "summary.json").read_text())
    adapter = run / "best" if (run / "best" / "adapter_config.json").is_file() else run / "adapter"
    # the same adapter decoded both ways (a decoding choice, no retraining): f1 is Viterbi's, the default
    reports = {}
    for decode in ("viterbi", "argmax"):
        out = run / f"eval-{a.split}-{decode}"
        if not (out / "report.json").is_file():
            medner(
                "eval",
                "run",
                "--config",
                str(ROOT / "eval/configs/default.yaml"),
                "backend=tokcls",
                f"model={a.model}",
                f"adapter={adapter}",
                f"corpus={a.corpus}",
                f"split={a.split}",
                f"tokcls_decode={decode}",
                f"out={out}",
                *([f"limit={a.limit}"] if a.limit else []),
                log=log,
            )
        reports[decode] = report(out)
    r = reports["viterbi"]
    micro = r["seqeval"]["micro"]
    thr = r.get("throughput") or {}
    argmax = reports["argmax"]["seqeval"]["micro"]
    metrics = {
        "f1": micro["f1"],
        "precision": micro["precision"],
        "recall": micro["recall"],
        "f1_ci95": micro.get("f1_ci95"),
        "f1_argmax": argmax["f1"],
        "f1_argmax_ci95": argmax.get("f1_ci95"),
        "decode": "viterbi",
        "test_records": r["records"],
        "train_examples": summary["examples_seen"],
        "train_windows": summary["train_examples"],
        "train_wall_s": summary["train_wall_s"],
        "records_per_s": thr.get("records_per_s"),
        "records_per_s_argmax": (reports["argmax"].get("throughput") or {}).get("records_per_s"),
        "best_dev_f1": summary.get("best_dev_f1"),
        "steps": summary["steps"],
        "stopped_by_budget": summary.get("stopped_by_budget"),
    }
    name = f"{a.corpus}-tokcls"
    cfg = (run / "config.resolved.yaml").read_text()
    trained_decode = yaml.safe_load(cfg).get("decode", "argmax")
    write_result(
        name,
        metrics,
        command=f"python -m bench.tokcls --model MODEL --corpus {a.corpus} --epochs {a.epochs}"
        + (f" --max-train-examples {a.max_train_examples}" if a.max_train_examples else "")
        + (f" --budget-s {a.budget_s:.0f}" if a.budget_s else "")
        + "".join(f" --override {o}" for o in a.override),
        notes=f"{a.model_name}; token classification (BIO head + LoRA, {summary.get('mode')}), {Path(a.config).name} + overrides; "
        f"adapter {'best by dev F1' if adapter.name == 'best' else 'final'}; {r['records']} {a.split} records through "
        "`medner eval run backend=tokcls` (strict seqeval, same scorer as the generative runs), decoded with Viterbi (f1, the default) "
        f"and argmax + CoNLL repair (f1_argmax); best_dev_f1 selected the checkpoint with {trained_decode} decoding; records_per_s = tagging only, "
        "model loading excluded; train_wall_s = training time over every resumed segment, dev evaluation excluded.",
        extra={
            "per_type": r["seqeval"].get("per_type"),
            "per_type_argmax": reports["argmax"]["seqeval"].get("per_type"),
            "failures": r.get("failures"),
            "dev": summary.get("dev"),
            "config_resolved": cfg,
            "adapter": str(adapter),
        },
    )
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
