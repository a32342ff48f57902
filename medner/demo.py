"""``make demo``: the whole pipeline end to end, offline, on CPU, in a few minutes.

tiny local Qwen2 model -> QLoRA SFT on vendored NCBI-disease -> real vLLM server with the adapter ->
``medner extract`` on one sentence -> ``medner eval run`` on 20 test records -> report.md.

The tiny model has random weights, so the scores are near zero: the demo shows the pipeline working,
not a trained model. ``python -m medner.demo --out DIR --limit N --steps N``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from medner import procs

ROOT = Path(__file__).resolve().parents[1]


def medner(*args: str) -> None:
    print("+ medner " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "medner.cli", *args], check=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/demo")
    ap.add_argument("--limit", type=int, default=20, help="test records to evaluate")
    ap.add_argument("--steps", type=int, default=12, help="SFT steps")
    a = ap.parse_args()
    out = Path(a.out)
    for old in (out / "sft", out / "eval"):  # a demo starts over (the tiny model is kept)
        shutil.rmtree(old, ignore_errors=True)
    tiny = out / "tiny-qwen2"
    if not (tiny / "config.json").is_file():
        medner("sft", "make-tiny", str(tiny))
    medner(
        "sft",
        "train",
        "--config",
        str(ROOT / "sft/configs/tiny.yaml"),
        f"model={tiny}",
        f"output_dir={out / 'sft'}",
        f"max_steps={a.steps}",
    )
    serve_log = out / "serve.log"
    print(f"+ medner serve (log in {serve_log})", flush=True)
    serve_args = [f"model={tiny}", f"adapter={out / 'sft' / 'adapter'}"]
    with procs.medner_server(ROOT / "serve/configs/tiny.yaml", serve_args, log=serve_log, timeout_s=600) as url:
        medner(
            "extract",
            "--url",
            url,
            "--model",
            "ner",
            "--corpus",
            "ncbi-disease",
            "Aspirin-induced asthma and hypertension were seen in a patient with asthma.",
        )
        medner("eval", "run", "--config", str(ROOT / "eval/configs/default.yaml"), f"url={url}", f"limit={a.limit}", f"out={out / 'eval'}")
    print(f"\ndemo done: adapter {out / 'sft' / 'adapter'}, report {out / 'eval' / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
