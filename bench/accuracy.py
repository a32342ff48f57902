"""Real-model accuracy: SFT on a corpus's training split, then the full test split through the real vLLM
server — schema-constrained (plain schema), grounded (ordered spans, the default decoding), unconstrained, and
zero-shot — recorded as `<corpus>-accuracy`.

    python -m bench.accuracy --model PATH --corpus ncbi-disease [--train-examples 480] [--limit N]
    python -m bench.accuracy --model PATH --corpus ncbi-disease --from-curve   # the learning curve's best adapter
    python -m bench.accuracy --model PATH --corpus ncbi-disease,cmedqaner --adapter RUN/adapter   # a mixture adapter

Training resumes from its last checkpoint when interrupted (run the same command again); finished
eval runs are reused (their predictions.jsonl), so a long benchmark survives interruption.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.common import ROOT, medner, report, server, write_result

PUBLISHED = {
    "ncbi-disease": ("BioBERT v1.1", 0.8971),
    "cmedqaner": ("MC-BERT", 0.881),
    "bc5cdr": ("Stanza biomed (one model, both types)", 0.8808),
}


def _same_raw(a: Path, b: Path) -> float:
    """Share of records whose raw reply is the same with the adapter and without it."""
    ra = {json.loads(l)["id"]: json.loads(l)["raw"] for l in (a / "predictions.jsonl").open()}
    rb = {json.loads(l)["id"]: json.loads(l)["raw"] for l in (b / "predictions.jsonl").open()}
    both = [k for k in ra if k in rb]
    return sum(ra[k] == rb[k] for k in both) / len(both) if both else 0.0


def summarize(run: Path) -> dict:
    r = report(run)
    f = r["failures"]
    n = r["records"]
    bad = f["invalid_json"]["count"] + f["schema_violation"]["count"] + f["truncated"]["count"] + f["error"]["count"]
    return {
        "f1": r["seqeval"]["micro"]["f1"],
        "precision": r["seqeval"]["micro"]["precision"],
        "recall": r["seqeval"]["micro"]["recall"],
        "f1_ci95": r["seqeval"]["micro"]["f1_ci95"],
        "parse_rate": (n - bad) / n if n else 0.0,
        "invalid_json": f["invalid_json"]["count"],
        "truncated": f["truncated"]["count"],
        "ungrounded": f["ungrounded"]["count"],
        "records": n,
        "records_per_s": (r.get("throughput") or {}).get("records_per_s"),
        "per_type": {
            t: {k: v[k] for k in ("precision", "recall", "f1", "support", "f1_ci95") if k in v}
            for t, v in r["seqeval"].get("per_type", {}).items()
        },
        "failures": {k: v["count"] for k, v in f.items()},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="base model folder or .gguf")
    ap.add_argument("--model-name", default="Qwen2.5-Coder-0.5B-Instruct (official Q4_K_M GGUF, dequantized to bf16)")
    ap.add_argument("--corpus", default="ncbi-disease")
    ap.add_argument("--config", default=str(ROOT / "sft/configs/qwen2.5-0.5b-cpu.yaml"))
    ap.add_argument("--train-examples", type=int, default=480, help="seeded subset of training pairs (0 = all)")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--train-corpora", help="train on this mixture (comma-separated) instead of --corpus alone")
    ap.add_argument("--adapter", help="use this adapter instead of training one")
    ap.add_argument("--from-curve", action="store_true", help="use the best adapter of bench/results/<corpus>-learning-curve.json")
    ap.add_argument("--limit", type=int, help="first N test records (default: the full split)")
    ap.add_argument("--run-dir", default="runs/bench")
    ap.add_argument("--skip-zero-shot", action="store_true")
    ap.add_argument("--sft-override", action="append", default=[], help="extra key=value for `medner sft train` (repeatable)")
    ap.add_argument("--record-only", action="store_true", help="record from the eval run folders already in --run-dir")
    ap.add_argument(
        "--runs",
        default=",".join(RUN_KEYS),
        help="which fine-tuned runs (comma-separated): plain (the plain schema, "
        "`f1`), free (unconstrained), grounded (the default decoding, `grounded_f1`)",
    )
    ap.add_argument(
        "--variant",
        help="a name for this training variant: results go to <corpus>[-mixture]-<variant>-accuracy.json, "
        "beside the main result rather than over it",
    )
    ap.add_argument("--training-note", default="", help="how the --adapter was trained (goes into the result)")
    a = ap.parse_args()
    result_name(a.corpus, False, a.variant)  # a bad --variant or --runs fails now, not after the evaluation
    a.runs = a.runs.split(",")
    if not a.runs or set(a.runs) - set(RUN_KEYS):
        raise SystemExit(f"--runs: a comma-separated choice of {', '.join(RUN_KEYS)}, not {','.join(a.runs)!r}")
    run_dir = Path(a.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / f"{a.corpus}.log"
    timings = {}
    if a.from_curve:
        curve = json.loads((ROOT / "bench" / "results" / f"{a.corpus}-learning-curve.json").read_text())
        a.adapter = curve["best_adapter"]
        a.training_note = a.training_note or (
            f"Adapter: the best of the learning curve by dev F1 ({curve['metrics']['best_dev_f1']:.4f} on "
            f"{curve['metrics']['dev_records']} dev records), at {curve['metrics']['best_examples']} training examples."
        )
    if a.adapter:
        adapter = Path(a.adapter)
        # a learning-curve snapshot (<run>/curve/step-N) or a run's final adapter (<run>/adapter)
        sft_dir = adapter.parent.parent if adapter.parent.name == "curve" else adapter.parent
    else:
        mix = a.train_corpora or a.corpus
        sft_dir = run_dir / f"sft-{mix.replace(',', '+')}"
        timings["sft_wall_s"] = medner(
            "sft",
            "train",
            "--config",
            a.config,
            f"model={a.model}",
            f"corpora=[{mix}]",
            f"max_train_examples={a.train_examples or 'null'}",
            f"num_epochs={a.epochs}",
            f"output_dir={sft_dir}",
            *a.sft_override,
            log=log,
        )
        adapter = sft_dir / "adapter"
    summary = json.loads((sft_dir / "summary.json").read_text()) if (sft_dir / "summary.json").is_file() else {}
    manifest = json.loads((sft_dir / "data_manifest.json").read_text()) if (sft_dir / "data_manifest.json").is_file() else {}
    if (adapter / "snapshot.json").is_file():  # training up to this adapter, not the whole run
        snap = json.loads((adapter / "snapshot.json").read_text())
        summary = {**summary, "steps": snap["step"], "train_wall_s": snap["train_wall_s"], "examples_seen": snap["examples"]}
    rec = json.loads((adapter / "medner_run.json").read_text()) if (adapter / "medner_run.json").is_file() else {}
    summary["prompt_version"] = rec.get("prompt_version")
    summary["trained_on"] = sorted(rec.get("corpora", {}))
    limit = [f"limit={a.limit}"] if a.limit else []
    corpora = a.corpus.split(",")
    cfg = str(ROOT / "eval/configs/default.yaml")
    # eval folders keyed by the adapter's content: predictions of another adapter are never resumed into these
    from medner.inference.models import adapter_hash

    tag = adapter_hash(adapter)[:10] if (adapter / "adapter_config.json").is_file() else "untrained"
    runs = {
        c: {
            "ft": run_dir / f"eval-{c}-ft-{tag}",
            "free": run_dir / f"eval-{c}-ft-free-{tag}",
            "grounded": run_dir / f"eval-{c}-ft-grounded-{tag}",
            "zs": run_dir / f"eval-{c}-zero-shot",
        }
        for c in corpora
    }
    walls: dict = {}
    if a.record_only:
        for c in corpora:
            record(a, c, runs[c], manifest, summary, timings)
        return 0
    # one engine per model, never the fine-tuned and the zero-shot runs on one engine: the fine-tuned model
    # (merged on the CPU build) first, with its constrained and free runs side by side, then the base alone
    from medner.data.records import convert
    from medner.data.registry import get_corpus

    expected = {c: min(a.limit or 10**9, len(convert(get_corpus(c), "test"))) for c in corpora}

    def finished(c: str, out: Path) -> bool:
        """A run folder whose report covers the records asked for: reused as it is (resuming it through a server
        on another port would be refused as another setup)."""
        try:
            return report(out)["records"] == expected[c]
        except (OSError, ValueError, KeyError):
            return False

    def pending(jobs: dict) -> dict:
        for k in [k for k, (_, out) in jobs.items() if finished(k[0], out)]:
            out = jobs.pop(k)[1]
            walls[k] = float((out / "wall_s.txt").read_text()) if (out / "wall_s.txt").is_file() else None
            print(f"{out}: finished earlier, reused", flush=True)
        return jobs

    def run_jobs(jobs: dict, url: str) -> None:
        jobs = {k: [*common(k[0], url), *extra, f"out={out}"] for k, (extra, out) in jobs.items()}
        with ThreadPoolExecutor(len(jobs)) as pool:
            futures = {k: pool.submit(medner, *args, log=run_dir / f"{k[0]}-{k[1]}.log") for k, args in jobs.items()}
            walls.update({k: f.result() for k, f in futures.items()})
        for k, args in jobs.items():
            Path(args[-1].removeprefix("out="), "wall_s.txt").write_text(f"{walls[k]:.1f}\n")

    def common(c: str, url: str) -> list[str]:
        return ["eval", "run", "--config", cfg, f"url={url}", f"corpus={c}", "split=test", "concurrency=8", *limit]

    jobs = {}
    for c in corpora:
        # `f1` is the plain schema's (comparable with every figure recorded before grounded decoding became the
        # default); the default, grounded ordered decoding, is recorded beside it as `grounded_f1`
        for name in a.runs:
            key, wall_key, extra = RUN_KEYS[name]
            jobs[(c, wall_key)] = (["served_model=ner", extra], runs[c][key])
    if pending(jobs):
        with server(a.model, str(adapter), corpora[0], log) as url:
            run_jobs(jobs, url)
    if not a.skip_zero_shot:
        jobs = pending({(c, "eval_zero_shot_wall_s"): (["served_model=base", "grounded=false"], runs[c]["zs"]) for c in corpora})
        if jobs:
            with server(a.model, None, corpora[0], log) as url:
                run_jobs(jobs, url)
    for c in corpora:
        record(a, c, runs[c], manifest, summary, {**timings, **{k: v for (cc, k), v in walls.items() if cc == c}})
    return 0


# --runs name -> (run folder key, wall-time metric, eval override)
RUN_KEYS = {
    "plain": ("ft", "eval_constrained_wall_s", "grounded=false"),
    "free": ("free", "eval_unconstrained_wall_s", "constrained=false"),
    "grounded": ("grounded", "eval_grounded_wall_s", "grounded=ordered"),
}


def result_name(corpus: str, mixture: bool, variant: str | None = None) -> str:
    """``<corpus>-accuracy``, ``<corpus>-mixture-accuracy``, with ``-<variant>`` before ``-accuracy`` when named."""
    if variant is not None and not re.fullmatch(r"[a-z0-9][a-z0-9-]*", variant):
        raise SystemExit(f"--variant: lower-case letters, digits and '-' only, not {variant!r}")
    return "-".join([corpus, *(["mixture"] if mixture else []), *([variant] if variant else []), "accuracy"])


def record(a, corpus: str, runs: dict, manifest: dict, summary: dict, timings: dict) -> None:
    def done(key: str) -> dict | None:
        return summarize(runs[key]) if runs[key].joinpath("report.json").is_file() else None

    # a run that did not finish (stopped for time) is recorded as missing, never as a score of its first records
    ft, free, grounded, zs = done("ft") or {}, done("free") or {}, done("grounded"), done("zs")
    missing = [name for name in a.runs if not {"ft": ft, "free": free, "grounded": grounded}[RUN_KEYS[name][0]]]
    ref_name, ref_f1 = PUBLISHED.get(corpus, (None, None))
    same = _same_raw(runs["ft"], runs["zs"]) if zs and ft else None  # a share near 1 means the adapter did not act
    metrics = {
        # every fine-tuned reply equal to the zero-shot reply means the adapter did not act in serving
        "adapter_replies_identical_to_zero_shot": same,
        "f1": ft.get("f1"),
        "unconstrained_f1": free.get("f1"),
        # grounded ordered decoding (the product's default): every mention a span of the input, in order
        "grounded_f1": grounded["f1"] if grounded else None,
        "grounded_f1_ci95": grounded["f1_ci95"] if grounded else None,
        "grounded_ungrounded": grounded["ungrounded"] if grounded else None,
        "zero_shot_f1": zs["f1"] if zs else None,
        "f1_ci95_low": ft["f1_ci95"][0] if ft else None,
        "f1_ci95_high": ft["f1_ci95"][1] if ft else None,
        "precision": ft.get("precision"),
        "recall": ft.get("recall"),
        "unconstrained_parse_rate": free.get("parse_rate"),
        "constrained_parse_rate": ft.get("parse_rate"),
        "zero_shot_parse_rate": zs["parse_rate"] if zs else None,
        "test_records": (ft or grounded or {}).get("records"),
        "runs_not_finished": missing,
        "runs_asked": a.runs,
        # training examples seen up to this adapter (steps x batch; at most one epoch, so distinct examples)
        "train_examples": summary.get("examples_seen") or manifest.get("train_examples"),
        "train_pairs_available": manifest.get("train_examples"),
        "train_steps": summary.get("steps"),
        "train_wall_s": summary.get("train_wall_s"),
        "train_tokens_per_s": summary.get("train_tokens_per_s"),
        "published_f1": ref_f1,
    }
    metrics.update({k: v for k, v in timings.items()})
    metrics["prompt_version"] = summary.get("prompt_version")
    name = result_name(corpus, len(summary.get("trained_on") or []) > 1, a.variant)
    write_result(
        name,
        metrics,
        command=f"python -m bench.accuracy --model MODEL --corpus {a.corpus}"
        + (
            " --from-curve"
            if a.from_curve
            else (f" --adapter {a.adapter}" if a.adapter else f" --train-examples {a.train_examples} --epochs {a.epochs}")
        )
        + (f" --train-corpora {a.train_corpora}" if a.train_corpora else "")
        + (f" --limit {a.limit}" if a.limit else "")
        + (f" --variant {a.variant}" if a.variant else "")
        + (f" --runs {','.join(a.runs)}" if a.runs != list(RUN_KEYS) else ""),
        notes=(f"{a.training_note} " if a.training_note else "")
        + f"model: {a.model_name}; SFT config {Path(a.config).name} (bf16 LoRA on CPU, prompt {summary.get('prompt_version')}), "
        f"{metrics['train_examples']} training examples of {', '.join(summary.get('trained_on') or [])} in {summary.get('steps')} steps and {summary.get('train_wall_s') or 0:.0f} s of training; eval on the {'full' if not a.limit else f'first {a.limit} records of the'} test split through the real vLLM server "
        f"(greedy; `f1` under the plain answer schema, `grounded_f1` under grounded ordered decoding; the constrained, grounded and free runs of the fine-tuned model shared one server concurrently, so their records/s are not speed figures); zero-shot = the same base model without the adapter, with the descriptive v1 prompt, schema-constrained, on its own server; published reference: {ref_name} {ref_f1}.",
        extra={
            "details": {
                "constrained": ft,
                "unconstrained": free,
                "grounded": grounded,
                "zero_shot": zs,
                "sft_summary": {
                    k: summary.get(k) for k in ("first_loss", "last_loss", "mode", "device", "peak_rss_gib", "warnings", "dev")
                },
            }
        },
    )
    # the human-readable report of each run beside the figures (per-type table, failures, error analysis)
    reports = ROOT / "bench/results/reports"
    reports.mkdir(parents=True, exist_ok=True)
    for key, label in (("ft", "constrained"), ("free", "unconstrained"), ("grounded", "grounded"), ("zs", "zero-shot")):
        if (runs[key] / "report.md").is_file():
            shutil.copy(runs[key] / "report.md", reports / f"{name}-{label}.md")
    if same == 1.0:
        print(f"WARNING {corpus}: every reply with the adapter equals the zero-shot reply: the adapter had no effect in serving")
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    raise SystemExit(main())
