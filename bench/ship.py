"""Put a trained adapter into ``models/<name>/``: the weights in bf16 safetensors, its LoRA config, run record,
resolved training config, data manifest and training summary. The model card (README.md) is written beside them
by hand from the recorded benchmarks; an adapter is replaced only when a recorded benchmark improves.

    python -m bench.ship --adapter runs/chat-qwen2.5-0.5b-cpu/adapter --name chat-qwen2.5-0.5b
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from bench.common import ROOT
from medner.pull import BASE_FILE, BASE_FOLDER, BASE_REPO, BASE_SHA256

KEEP = ("adapter_config.json", "medner_run.json", "config.resolved.yaml", "data_manifest.json")
MAX_MB = 40  # all of models/


def ship(adapter: Path, name: str) -> Path:
    # heavy optional dependencies, needed only here
    import torch
    from safetensors.torch import load_file, save_file

    out = ROOT / "models" / name
    out.mkdir(parents=True, exist_ok=True)
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in weights.items()}, str(out / "adapter_model.safetensors"))
    for f in KEEP:
        if (adapter / f).is_file():
            shutil.copy(adapter / f, out / f)
    # the base as users get it (medner pull), not the folder it had on the training machine; the weights hash
    # in the record is what serve and eval check
    rec = json.loads((out / "medner_run.json").read_text())
    rec["base_model"].update(
        source=f"{BASE_REPO}/{BASE_FILE} (sha256 {BASE_SHA256}), dequantized by `medner pull`", path=f"$HF_HOME/medner/{BASE_FOLDER}"
    )
    (out / "medner_run.json").write_text(json.dumps(rec, indent=2, ensure_ascii=False) + "\n")
    manifest = out / "data_manifest.json"
    if manifest.is_file():  # data files named relative to the project, not the training machine
        m = json.loads(manifest.read_text())
        for f in m.get("files", []):
            f["file"] = str(Path(f["file"]).resolve().relative_to(ROOT)) if Path(f["file"]).resolve().is_relative_to(ROOT) else f["file"]
        manifest.write_text(json.dumps(m, indent=2) + "\n")
    lora = json.loads((out / "adapter_config.json").read_text())
    lora["base_model_name_or_path"] = BASE_FOLDER
    (out / "adapter_config.json").write_text(json.dumps(lora, indent=2) + "\n")
    cfg = out / "config.resolved.yaml"
    if cfg.is_file():
        lines = [
            f"model: {BASE_FOLDER}  # medner pull prints its path" if ln.startswith("model:") else ln for ln in cfg.read_text().splitlines()
        ]
        cfg.write_text("\n".join(lines) + "\n")
    summary = adapter.parent / "summary.json"
    if summary.is_file():
        s = json.loads(summary.read_text())
        keep = {
            k: s[k]
            for k in (
                "steps",
                "train_wall_s",
                "train_examples",
                "examples_seen",
                "train_wall_s_total",
                "examples_seen_total",
                "mean_example_tokens",
                "train_loss",
                "mode",
                "device",
                "machine",
                "best_dev_f1",
                "dev",
            )
            if k in s
        }
        (out / "training_summary.json").write_text(json.dumps(keep, indent=2) + "\n")
    size = sum(p.stat().st_size for p in (ROOT / "models").rglob("*") if p.is_file()) / 2**20
    if size > MAX_MB:
        raise SystemExit(f"models/ would hold {size:.1f} MB (at most {MAX_MB})")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--adapter", type=Path, required=True)
    ap.add_argument("--name", required=True)
    a = ap.parse_args()
    print(ship(a.adapter, a.name))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
