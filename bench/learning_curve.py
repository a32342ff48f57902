"""A learning curve: one resumable SFT run on a corpus's training split that keeps its adapter at chosen
numbers of training examples, each evaluated on the full dev split. Recorded as `<corpus>-learning-curve`
(JSON + PNG: dev F1 against training examples and against training wall time).

    python -m bench.learning_curve --model PATH --corpus ncbi-disease [--points 250,500,1000,2000,4000]
        [--budget-s 10800] [--epochs 1] [--sft-override key=value ...]

Interrupt it at any time and run the same command again: training resumes from its last checkpoint (its
clock adds up every segment), snapshots and dev evaluations already done are reused. Dev evaluation runs
after training, on vLLM's offline engine with the snapshot merged into the base (the same request
contract as the server), and its time is reported apart from training time.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.common import ROOT, medner, report, write_result

# batch 8: a snapshot is kept at the first step that reaches each count (the final adapter is always a point)
DEFAULT_POINTS = {"ncbi-disease": "256,504,1000,2000,4000", "cmedqaner": "256,504,1000,2000"}


def snapshots(run: Path) -> list[Path]:
    """Snapshot folders of a run, by step: ``curve/step-N`` and the final ``adapter``."""
    found = [d for d in (run / "curve").glob("step-*") if (d / "snapshot.json").is_file()]
    if (run / "adapter" / "snapshot.json").is_file():
        final = json.loads((run / "adapter" / "snapshot.json").read_text())
        if not any(json.loads((d / "snapshot.json").read_text())["step"] == final["step"] for d in found):
            found.append(run / "adapter")
    return sorted(found, key=lambda d: json.loads((d / "snapshot.json").read_text())["step"])


def dev_eval(model: str, adapter: Path, corpus: str, out: Path, log: Path, limit: int | None, batch_size: int = 4096) -> dict:
    seconds = None
    if not (out / "report.json").is_file():
        seconds = medner(
            "eval",
            "run",
            "--config",
            str(ROOT / "eval/configs/default.yaml"),
            "backend=vllm",
            f"model={model}",
            f"adapter={adapter}",
            # the plain schema, as every point of the recorded curves (grounded decoding is compared apart: bench.grounded)
            f"corpus={corpus}",
            "split=dev",
            "grounded=false",
            f"out={out}",
            "bootstrap=200",
            f"batch_size={batch_size}",
            *([f"limit={limit}"] if limit else []),
            log=log,
        )
        (out / "wall_s.txt").write_text(f"{seconds:.1f}\n")
    elif (out / "wall_s.txt").is_file():
        seconds = float((out / "wall_s.txt").read_text())
    r = report(out)
    f = r["failures"]
    micro = r["seqeval"]["micro"]
    return {
        "dev_f1": micro["f1"],
        "dev_precision": micro["precision"],
        "dev_recall": micro["recall"],
        "dev_f1_ci95": micro.get("f1_ci95"),
        "dev_records": r["records"],
        "dev_unparsed": sum(f[k]["count"] for k in ("invalid_json", "schema_violation", "truncated", "error")),
        "dev_eval_wall_s": seconds,
    }


def plot(points: list[dict], corpus: str, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    xs = [p["examples"] for p in points]
    hs = [p["train_wall_s"] / 3600 for p in points]
    ys = [p["dev_f1"] for p in points]
    for ax, x, label in ((a, xs, "training examples seen"), (b, hs, "training wall time (h, dev evaluation excluded)")):
        ax.plot(x, ys, marker="o")
        for p, xi in zip(points, x):
            lo, hi = (p.get("dev_f1_ci95") or [None, None])[:2]
            if lo is not None:
                ax.vlines(xi, lo, hi, alpha=0.4)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    a.set_ylabel(f"strict F1, full {corpus} dev split")
    import textwrap

    fig.suptitle("\n".join(textwrap.wrap(title, 140)), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="base model folder or .gguf")
    ap.add_argument("--model-name", default="Qwen2.5-Coder-0.5B-Instruct (official Q4_K_M GGUF, dequantized to bf16)")
    ap.add_argument(
        "--corpus", default="ncbi-disease", help="corpus (comma-separated: corpora) to evaluate on, and to train on unless --train-corpora"
    )
    ap.add_argument("--train-corpora", help="train on this mixture (comma-separated)")
    ap.add_argument("--config", default=str(ROOT / "sft/configs/qwen2.5-0.5b-cpu.yaml"))
    ap.add_argument("--points", help="training examples at which to keep the adapter (comma-separated)")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--budget-s", type=float, help="stop training after this many seconds (max_train_wall_s)")
    ap.add_argument("--dev-limit", type=int, help="first N dev records only (default: the full split)")
    ap.add_argument(
        "--dev-batch-size",
        type=int,
        default=4096,
        help="records per engine call: the whole dev split at once, 128 in flight and scheduled continuously, so a "
        "long reply does not hold the others back (a killed evaluation then redoes the split)",
    )
    ap.add_argument("--run-dir", default="runs/bench")
    ap.add_argument("--name", help="run folder name (default: curve-<train corpora>)")
    ap.add_argument("--sft-override", action="append", default=[], help="extra key=value for `medner sft train` (repeatable)")
    ap.add_argument("--train-only", action="store_true", help="stop after training (evaluate later with the same command)")
    ap.add_argument(
        "--eval-only",
        action="store_true",
        help="evaluate the snapshots kept so far without training further (a run stopped part-way: recorded with "
        "training_complete false; rerun without it to resume training)",
    )
    a = ap.parse_args()
    mix = a.train_corpora or a.corpus
    run = Path(a.run_dir) / (a.name or f"curve-{mix.replace(',', '+')}")
    run.mkdir(parents=True, exist_ok=True)
    log = run / "bench.log"
    points = a.points or DEFAULT_POINTS.get(a.corpus, "256,504,1000,2000,4000")
    if a.eval_only and a.train_only:
        ap.error("--eval-only and --train-only exclude each other")
    if not (run / "adapter" / "snapshot.json").is_file() and not a.eval_only:
        medner(
            "sft",
            "train",
            "--config",
            a.config,
            f"model={a.model}",
            f"corpora=[{mix}]",
            "max_train_examples=null",
            f"num_epochs={a.epochs}",
            f"output_dir={run}",
            f"curve_examples=[{points}]",
            "dev_examples=0",
            "eval_steps=0",
            *([f"max_train_wall_s={a.budget_s}"] if a.budget_s else []),
            *a.sft_override,
            log=log,
        )
    if a.train_only:
        return 0
    summary = training_summary(run)
    if not snapshots(run):
        raise SystemExit(f"{run}: no snapshot kept yet (curve/step-N/snapshot.json): train first")
    for corpus in a.corpus.split(","):
        record_curve(a, run, corpus, mix, points, summary, log)
    return 0


def training_summary(run: Path) -> dict:
    """The finished run's summary.json; for a run stopped part-way, what its newest snapshot knows."""
    if (run / "summary.json").is_file():
        return {**json.loads((run / "summary.json").read_text()), "training_complete": True}
    kept = snapshots(run)
    last = json.loads((kept[-1] / "snapshot.json").read_text()) if kept else {}
    config = run / "config.resolved.yaml"
    version = None
    if config.is_file():
        import yaml

        version = (yaml.safe_load(config.read_text()) or {}).get("prompt_version")
    return {
        "steps": last.get("step"),
        "train_wall_s": last.get("train_wall_s"),
        "examples_seen": last.get("examples"),
        "prompt_version": version,
        "training_complete": False,
    }


def record_curve(a, run: Path, corpus: str, mix: str, points: str, summary: dict, log: Path) -> None:
    rows = []
    for snap in snapshots(run):
        meta = json.loads((snap / "snapshot.json").read_text())
        res = dev_eval(a.model, snap, corpus, run / "dev-eval" / corpus / f"step-{meta['step']}", log, a.dev_limit, a.dev_batch_size)
        rows.append({"adapter": str(snap), **meta, **res})
        print(
            f"{corpus} step {meta['step']}: {meta['examples']} examples, {meta['train_wall_s']:.0f} s -> dev F1 {res['dev_f1']:.4f}",
            flush=True,
        )
    best = max(rows, key=lambda r: r["dev_f1"])
    mixture = "," in mix
    name = f"{corpus}-mixture-learning-curve" if mixture else f"{corpus}-learning-curve"
    title = (
        f"{a.model_name}; bf16 LoRA on {mix} ({summary.get('prompt_version')} prompt); "
        f"dev F1 on {rows[-1]['dev_records']} {corpus} dev records"
    )
    plot(rows, corpus, ROOT / "bench" / "results" / f"{name}.png", title)
    metrics = {
        "best_dev_f1": best["dev_f1"],
        "best_examples": best["examples"],
        "best_train_wall_s": best["train_wall_s"],
        "points": len(rows),
        "dev_records": rows[-1]["dev_records"],
        "train_wall_s_total": summary.get("train_wall_s"),
        "dev_eval_wall_s_total": sum(r["dev_eval_wall_s"] or 0 for r in rows),
        "training_complete": summary["training_complete"],
    }
    write_result(
        name,
        metrics,
        command=f"python -m bench.learning_curve --model MODEL --corpus {a.corpus} --points {points} --epochs {a.epochs}"
        + (f" --train-corpora {a.train_corpora}" if a.train_corpora else "")
        + (f" --budget-s {a.budget_s:.0f}" if a.budget_s else "")
        + "".join(f" --sft-override {o}" for o in a.sft_override),
        notes=f"{title}. One run ({Path(a.config).name} + overrides), adapters kept at the listed example counts; train_wall_s = training "
        "time up to that point over every resumed segment, dev evaluation excluded (dev_eval_wall_s, vLLM offline engine, merged model).",
        extra={
            "curve": rows,
            "best_adapter": best["adapter"],
            "sft_summary": {
                k: summary.get(k)
                for k in (
                    "steps",
                    "train_wall_s",
                    "examples_seen",
                    "train_examples",
                    "mean_example_tokens",
                    "prompt_version",
                    "mode",
                    "first_loss",
                    "last_loss",
                    "stopped_by_budget",
                    "peak_rss_gib",
                    "training_complete",
                )
            },
        },
    )
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    raise SystemExit(main())
