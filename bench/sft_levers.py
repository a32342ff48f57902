"""Where SFT time goes on this CPU: training examples per minute of the real 0.5B model under each lever,
one lever added at a time on the same seeded examples. Recorded as `sft-levers`.

    python -m bench.sft_levers --model PATH [--steps 6] [--corpus ncbi-disease]

Levers (sft config keys): the compact prompt (``prompt_version=compact-v1``: label names and one line instead
of the descriptive prompt) and length-grouped batches (``group_by_length``). Padding-free batches are not
among them: without FlashAttention (so on every CPU) they let a batch's examples attend to each other, and
the config refuses them. Logits over the vocabulary are computed only at answer positions in every variant
(TRL's fused LM head does that by itself with ``completion_only_loss``). Finished variants are reused.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from bench.common import ROOT, medner, write_result

VARIANTS = {
    "descriptive_prompt": ["prompt_version=v1"],
    "compact_prompt": ["prompt_version=compact-v1"],
    "compact_grouped": ["prompt_version=compact-v1", "group_by_length=true"],
}


def step_seconds(run: Path) -> list[float]:
    """Per-step wall seconds from the trainer's log (the first step, with its warm-up, left out)."""
    state = json.loads((run / "trainer_state.json").read_text()) if (run / "trainer_state.json").is_file() else None
    times = [e["step_wall_s"] for e in (state or {}).get("log_history", []) if "step_wall_s" in e]
    return times[1:]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="real model folder (Qwen2.5-0.5B class)")
    ap.add_argument("--model-name", default="Qwen2.5-Coder-0.5B-Instruct (official Q4_K_M GGUF, dequantized to bf16)")
    ap.add_argument("--corpus", default="ncbi-disease")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--run-dir", default="runs/bench/sft-levers")
    ap.add_argument("--only", nargs="*", choices=sorted(VARIANTS), help="run these variants only")
    a = ap.parse_args()
    d = Path(a.run_dir)
    d.mkdir(parents=True, exist_ok=True)
    log = d / "sft-levers.log"
    metrics: dict = {}
    runs: dict = {}
    for name, extra in VARIANTS.items():
        if a.only and name not in a.only:
            continue
        out = d / a.corpus / name
        if not (out / "summary.json").is_file():
            medner(
                "sft",
                "train",
                "--config",
                str(ROOT / "sft/configs/qwen2.5-0.5b-cpu.yaml"),
                f"model={a.model}",
                f"output_dir={out}",
                f"corpora=[{a.corpus}]",
                f"max_steps={a.steps}",
                f"batch_size={a.batch_size}",
                "save_steps=100000",
                "dev_examples=0",
                f"max_train_examples={a.steps * a.batch_size}",
                *extra,
                log=log,
            )
        s = json.loads((out / "summary.json").read_text())
        s["steps"] * a.batch_size
        per_step = s.get("step_wall_s") or []
        steady = statistics.median(per_step[1:]) if len(per_step) > 1 else s["train_wall_s"] / s["steps"]
        runs[name] = {
            "overrides": extra,
            "steps": s["steps"],
            "train_wall_s": s["train_wall_s"],
            "median_step_s": steady,
            "examples_per_min": 60 * a.batch_size / steady,
            "mean_example_tokens": s.get("mean_example_tokens"),
            "train_tokens_seen": s.get("train_tokens"),
            "last_loss": s.get("last_loss"),
            "peak_rss_gib": s.get("peak_rss_gib"),
        }
        metrics[f"{name}_examples_per_min"] = runs[name]["examples_per_min"]
    if "descriptive_prompt" in runs:
        base = runs["descriptive_prompt"]["examples_per_min"]
        for r in runs.values():
            r["speedup_vs_descriptive"] = r["examples_per_min"] / base
    write_result(
        "sft-levers",
        metrics,
        command=f"python -m bench.sft_levers --model MODEL --steps {a.steps} --corpus {a.corpus}",
        notes=f"{a.model_name}, bf16 LoRA r=16 all-linear, batch {a.batch_size}, {a.steps} steps on the same seeded {a.corpus} "
        "training examples per variant, CPU. examples/min from the median step time (the first step left out).",
        extra={"runs": runs},
    )
    print(json.dumps(runs, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
