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
    a = ap.parse_args()
    d = Path(a.run_dir)
    d.mkdir(parents=True, exist_ok=True)
    log = d / "sft-speed.log"
    tiny = d / "tiny-qwen2"
    if not (tiny / "config.json").is_file():
        medner("sft", "make-tiny", str(tiny), log=log)
    metrics: dict = {}
    runs = {"tiny_qlora": ("tiny.yaml", str(tiny), [])}
    if a.model:
        runs["qwen0.5b_cpu_lora"] = ("qwen2.5-0.5b-cpu.yaml", a.model, [])
        runs["qwen0.5b_cpu_qlora"] = ("qwen2.5-0.5b-cpu.yaml", a.model, ["quantization=nf4"])
    details = {}
    for name, (cfg, model, extra) in runs.items():
        out = d / name
        medner("sft", "train", "--config", str(ROOT / "sft/configs" / cfg), f"model={model}", f"output_dir={out}", f"max_steps={a.steps}",
               "save_steps=1000", "dev_examples=0", *extra, log=log)
        s = json.loads((out / "summary.json").read_text())
        details[name] = {k: s.get(k) for k in ("steps", "train_wall_s", "train_tokens", "train_tokens_per_s", "peak_rss_gib", "mode", "first_loss", "last_loss")}
        metrics[f"{name}_tokens_per_s"] = s.get("train_tokens_per_s")
        metrics[f"{name}_peak_rss_gib"] = s.get("peak_rss_gib")
    metrics["gpu"] = "not run: no GPU on this machine"
    write_result("sft-speed", metrics, command=f"python -m bench.sft_speed{' --model MODEL' if a.model else ''} --steps {a.steps}",
                 notes=f"{a.steps} steps each, fresh output folders, batch 4 (tiny) / 8 (0.5B), CPU; real model: {a.model_name}; "
                       "tokens/s = input tokens seen / training wall time (includes the end-of-run dev evaluation only when dev_examples > 0: here 0).",
                 extra={"runs": details})
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
