"""Record a GPU accuracy run (called by bench/gpu_accuracy.sh): `<corpus>-gpu-accuracy.json` with the GPU named."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.accuracy import PUBLISHED, summarize
from bench.common import write_result


def gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU dry run)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--sft", required=True, type=Path, help="the SFT run folder")
    ap.add_argument("--eval", required=True, type=Path, help="the eval run folder of the test split")
    ap.add_argument("--results", required=True, type=Path)
    ap.add_argument("--model", required=True)
    ap.add_argument("--total-s", type=float)
    ap.add_argument("--overrides", nargs="*", default=[])
    ap.add_argument("--dry-run", action="store_true")
    a = ap.parse_args()
    s = json.loads((a.sft / "summary.json").read_text())
    ev = summarize(a.eval)
    decoding = (json.loads((a.eval / "report.json").read_text()).get("run") or {}).get("grounded") or "plain schema"
    metrics = {
        "f1": ev["f1"],
        "precision": ev["precision"],
        "recall": ev["recall"],
        "f1_ci95_low": ev["f1_ci95"][0],
        "f1_ci95_high": ev["f1_ci95"][1],
        "parse_rate": ev["parse_rate"],
        "test_records": ev["records"],
        "train_examples": s.get("train_examples"),
        "train_steps": s.get("steps"),
        "train_wall_s": s.get("train_wall_s"),
        "train_tokens_per_s": s.get("train_tokens_per_s"),
        "peak_gpu_mem_gib": s.get("peak_gpu_mem_gib"),
        "eval_records_per_s": ev["records_per_s"],
        "grounded": decoding,
        "gpu": gpu_name(),
        "published_f1": PUBLISHED.get(a.corpus, (None, None))[1],
    }
    path = write_result(
        f"{a.corpus}-gpu-accuracy",
        metrics,
        command=f"bench/gpu_accuracy.sh {'dry-run' if a.dry_run else 'run'} --model MODEL --corpus {a.corpus}"
        + "".join(f" {o}" for o in a.overrides if not a.dry_run),
        notes=f"{'DRY RUN on the CPU with a tiny random model: checks the steps, not a result. ' if a.dry_run else ''}"
        f"QLoRA SFT (sft/configs/qwen2.5-0.5b-qlora.yaml, {s.get('mode')}, prompt {s.get('prompt_version')}) on the full {a.corpus} training split; "
        f"the test split through eval's transformers backend (constrained greedy decoding, grounded: {decoding}; the shared request contract). "
        f"Total wall time of the script {a.total_s:.0f} s.",
        extra={
            "sft_summary": {
                k: s.get(k)
                for k in ("steps", "train_wall_s", "examples_seen", "mean_example_tokens", "first_loss", "last_loss", "warnings", "dev")
            },
            "eval": ev,
        },
        results=a.results,
    )
    print(f"recorded {path}: F1 {metrics['f1']:.4f} on {metrics['test_records']} test records, GPU: {metrics['gpu']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
