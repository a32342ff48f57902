"""``make demo``: the whole pipeline end to end, offline, on CPU, in a few minutes.

tiny local Qwen2 model -> QLoRA SFT on vendored NCBI-disease -> real vLLM server with the adapter ->
``medner extract`` on one sentence -> ``medner eval run`` on 20 test records -> report.md.

The tiny model has random weights, so the scores are near zero: the demo shows the pipeline working,
not a trained model. ``python -m medner.demo --out DIR --limit N --steps N``.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
from pathlib import Path

from medner.serve.launch import free_port, wait_ready

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
    tiny = out / "tiny-qwen2"
    if not (tiny / "config.json").is_file():
        medner("sft", "make-tiny", str(tiny))
    medner("sft", "train", "--config", str(ROOT / "sft/configs/tiny.yaml"), f"model={tiny}", f"output_dir={out / 'sft'}", f"max_steps={a.steps}")
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    print(f"+ medner serve (port {port}); log in {out / 'serve.log'}", flush=True)
    with (out / "serve.log").open("w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "medner.cli", "serve", "--config", str(ROOT / "serve/configs/tiny.yaml"),
             f"model={tiny}", f"adapter={out / 'sft' / 'adapter'}", f"port={port}"],
            stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        wait_ready(url, server, 600)
        medner("extract", "--url", url, "--model", "ner", "--corpus", "ncbi-disease",
               "Aspirin-induced asthma and hypertension were seen in a patient with asthma.")
        medner("eval", "run", "--config", str(ROOT / "eval/configs/default.yaml"), f"url={url}", f"limit={a.limit}", f"out={out / 'eval'}")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    print(f"\ndemo done: adapter {out / 'sft' / 'adapter'}, report {out / 'eval' / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
