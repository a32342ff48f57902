"""SFT throughput (tokens/s, peak memory): the tiny config on a fresh tiny model, and the real-model CPU
config for a few steps. Recorded as `sft-speed`.

    python -m bench.sft_speed --model PATH [--steps 6]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.common import ROOT, medner, write_result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="real model folder for the 0.5B CPU config (skipped when absent)")
    ap.add_argument("--model-name", default="Qwen2.5-Coder-0.5B-Instruct (official Q4_K_M GGUF, dequantized to bf16)")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--run-dir", default="runs/bench/sft-speed")
    ap.add_argument(
        "--real-run", help="take the 0.5B CPU figures from this finished run folder (its summary.json) instead of training again"
    )
    ap.add_argument("--qlora", action="store_true", help="also time 4-bit QLoRA of the real model on CPU")
    a = ap.parse_args()
    d = Path(a.run_dir)
    d.mkdir(parents=True, exist_ok=True)
    log = d / "sft-speed.log"
    tiny = d / "tiny-qwen2"
    if not (tiny / "config.json").is_file():
        medner("sft", "make-tiny", str(tiny), log=log)
    metrics: dict = {}
    runs = {"tiny_qlora": ("tiny.yaml", str(tiny), [])}
    if a.model and not a.real_run:
        runs["qwen0.5b_cpu_lora"] = ("qwen2.5-0.5b-cpu.yaml", a.model, [])
    if a.model and a.qlora:
        runs["qwen0.5b_cpu_qlora"] = ("qwen2.5-0.5b-cpu.yaml", a.model, ["quantization=nf4"])
    details = {}
    sources = {name: d / name for name in runs}
    if a.real_run:
        sources["qwen0.5b_cpu_lora"] = Path(a.real_run)
    for name, out in sources.items():
        if name in runs:
            cfg, model, extra = runs[name]
            medner(
                "sft",
                "train",
                "--config",
                str(ROOT / "sft/configs" / cfg),
                f"model={model}",
                f"output_dir={out}",
                f"max_steps={a.steps}",
                "save_steps=1000",
                "dev_examples=0",
                *extra,
                log=log,
            )
        s = json.loads((out / "summary.json").read_text())
        details[name] = {
            "run": str(out),
            **{
                k: s.get(k)
                for k in ("steps", "train_wall_s", "train_tokens", "train_tokens_per_s", "peak_rss_gib", "mode", "first_loss", "last_loss")
            },
        }
        metrics[f"{name}_tokens_per_s"] = s.get("train_tokens_per_s")
        metrics[f"{name}_peak_rss_gib"] = s.get("peak_rss_gib")
    metrics["gpu"] = "not run: no GPU on this machine"
    cmd = (
        f"python -m bench.sft_speed{' --model MODEL' if a.model else ''} --steps {a.steps}"
        + (f" --real-run {a.real_run}" if a.real_run else "")
        + (" --qlora" if a.qlora else "")
    )
    write_result(
        "sft-speed",
        metrics,
        command=cmd,
        notes=f"tiny: {a.steps} steps of sft/configs/tiny.yaml (QLoRA, batch 4) on a fresh tiny model; real model ({a.model_name}): "
        + (
            f"the bench SFT run {a.real_run} (bf16 LoRA, batch 8, its full length)"
            if a.real_run
            else f"{a.steps} steps of qwen2.5-0.5b-cpu.yaml"
        )
        + "; CPU. tokens/s = input tokens seen / training wall time, which includes the end-of-run dev evaluation where the run had one.",
        extra={"runs": details},
    )
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
