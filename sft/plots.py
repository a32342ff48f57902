"""Loss curve of a run: ``loss_curve.json`` and ``loss_curve.png``."""

from __future__ import annotations

import json
from pathlib import Path


def write_loss_curve(log_history: list[dict], out: Path, title: str = "medner SFT") -> dict:
    loss = [{"step": h["step"], "loss": h["loss"]} for h in log_history if "loss" in h and "step" in h]
    dev = [{"step": h["step"], "dev_f1": h["dev_f1"], "dev_parse_rate": h.get("dev_parse_rate")} for h in log_history if "dev_f1" in h]
    (out / "loss_curve.json").write_text(json.dumps({"train": loss, "dev": dev}, indent=2) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    if loss:
        ax.plot([r["step"] for r in loss], [r["loss"] for r in loss], label="train loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if dev:
        ax2 = ax.twinx()
        ax2.plot([r["step"] for r in dev], [r["dev_f1"] for r in dev], "o-", color="tab:green", label="dev strict F1")
        ax2.set_ylabel("dev F1")
        ax2.set_ylim(0, 1)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out / "loss_curve.png", dpi=100)
    plt.close(fig)
    return {"first_loss": loss[0]["loss"] if loss else None, "last_loss": loss[-1]["loss"] if loss else None}
