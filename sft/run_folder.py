"""A training run's folder, shared by both recipes (``sft/train.py``, ``sft/tokcls.py``): the resume check, the
resolved config, the data manifest, the run record's base-model part, resuming from the newest complete
checkpoint, and the end of a run (adapter, record, copies of config and manifest, loss curve, summary).

Layout of ``output_dir``: ``config.resolved.yaml``, ``data_manifest.json``, ``checkpoint-N/`` (resume),
``adapter/`` (the result, with its ``medner_run.json``), ``best/`` (best dev F1), ``summary.json``, ``loss.png``.
Only the main process of a data-parallel run writes files.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import re
import resource
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from medner.config import ConfigError, save_config
from medner.inference.models import resolve_model, tokenizer_hash, weights_hash
from medner.machine import describe as describe_machine
from medner.sft.plots import write_loss_curve

log = logging.getLogger(__name__)


def rank_and_world() -> tuple[int, int]:
    """(this process's rank, the number of processes) under torchrun / accelerate launch; (0, 1) alone."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The newest *complete* checkpoint: one whose trainer state, adapter and optimizer were all written.
    A checkpoint cut short by a kill lacks one of them and is skipped."""
    done = []
    for d in output_dir.glob("checkpoint-*"):
        m = re.fullmatch(r"checkpoint-(\d+)", d.name)
        if not m:
            continue
        needed = ["trainer_state.json", "adapter_model.safetensors", "optimizer.pt", "scheduler.pt"]
        if all((d / f).is_file() and (d / f).stat().st_size > 0 for f in needed):
            try:
                json.loads((d / "trainer_state.json").read_text())
            except ValueError:
                continue
            done.append((int(m.group(1)), d))
    return max(done)[1] if done else None


def check_resumable(cfg: Any, out: Path, keys: tuple[str, ...]) -> None:
    """Refuse to resume checkpoints that another setup wrote into the same output_dir (one line)."""
    old_path = out / "config.resolved.yaml"
    if not (old_path.is_file() and latest_checkpoint(out)):
        return
    old = yaml.safe_load(old_path.read_text(encoding="utf-8")) or {}
    changed = [k for k in keys if k in old and old[k] != getattr(cfg, k)]
    if changed:
        raise ConfigError(
            f"{out} holds checkpoints of another setup ({', '.join(f'{k}: {old[k]!r} -> {getattr(cfg, k)!r}' for k in changed)}); "
            "use another output_dir, or delete it to start over"
        )


def pick_device(device: str) -> str:
    import torch  # heavy: only a training run needs it

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA GPU is visible")
    return device


def load_tokenizer(model_dir: Path):
    """The base model's tokenizer, with a pad token (Qwen2.5 ships none)."""
    from transformers import AutoTokenizer  # heavy: only a training run needs it

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = "<|endoftext|>"
    return tokenizer


def prepare_machine(cfg: Any) -> tuple[Path, str, Any]:
    """The base model folder, the device and the tokenizer; torch's threads as configured."""
    import torch  # heavy: only a training run needs it

    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    model_dir = resolve_model(cfg.model)
    return model_dir, pick_device(cfg.device), load_tokenizer(model_dir)


def base_model_record(source: str, model_dir: Path) -> dict:
    """The run record's ``base_model``: where it came from and the hashes a later load is checked against."""
    return {
        "source": source,
        "path": str(model_dir),
        "weights_sha256": weights_hash(model_dir),
        "tokenizer_sha256": tokenizer_hash(model_dir),
    }


def created_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@dataclasses.dataclass
class RunFolder:
    out: Path
    main: bool  # the process that writes files
    world: int  # data-parallel processes

    @classmethod
    def open(cls, cfg: Any, resume_keys: tuple[str, ...]) -> RunFolder:
        """``cfg.output_dir`` made, checked against the setup of the checkpoints it holds, the config saved."""
        rank, world = rank_and_world()
        run = cls(Path(cfg.output_dir), rank == 0, world)
        run.out.mkdir(parents=True, exist_ok=True)
        check_resumable(cfg, run.out, resume_keys)
        if run.main:
            save_config(cfg, run.out / "config.resolved.yaml")
        return run

    def write_manifest(self, manifest: dict) -> None:
        if self.main:
            (self.out / "data_manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")

    def log_data_parallel(self, what: str, batch_size: int, grad_accum: int) -> None:
        if self.world > 1 and self.main:
            log.info(
                "data-parallel: %d processes x batch_size %d x grad_accum %d = %d %s per optimizer step; each process trains on its shard",
                self.world,
                batch_size,
                grad_accum,
                self.world * batch_size * grad_accum,
                what,
            )

    def train(self, trainer: Any) -> tuple[Any, float]:
        """``trainer.train()``, resumed from the newest complete checkpoint; returns its result and wall time."""
        resume = latest_checkpoint(self.out)
        if resume:
            log.info("resuming from %s", resume.name)
        t0 = time.perf_counter()
        result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        return result, time.perf_counter() - t0

    def save_adapter(self, trainer: Any, write_meta: Callable[[Path, int], None]) -> Path:
        """``adapter/``: the weights, the run record and tokenizer (``write_meta``), the config and manifest."""
        final = self.out / "adapter"
        trainer.model.save_pretrained(str(final))
        write_meta(final, trainer.state.global_step)
        shutil.copy(self.out / "config.resolved.yaml", final / "config.resolved.yaml")
        shutil.copy(self.out / "data_manifest.json", final / "data_manifest.json")
        return final

    def write_summary(self, trainer: Any, title: str | None, **fields: Any) -> dict:
        """``summary.json``: the loss curve's figures, ``fields``, the peak memory of this process and the machine
        (the last segment's, for a resumed run: training times mean something only beside it)."""
        summary = write_loss_curve(trainer.state.log_history, self.out, **({"title": title} if title else {}))
        summary.update(fields)
        summary["machine"] = describe_machine()
        if fields.get("device") == "cuda":
            import torch  # heavy: only a training run needs it

            summary["peak_gpu_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
        else:
            summary["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary
