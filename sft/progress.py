"""Training progress that outlives a kill: wall time across resumed segments, and adapter snapshots for a
learning curve.

Both write into the trainer's ``log_history``, which every checkpoint saves and a resumed run reloads, so a run
resumed from ``checkpoint-N`` continues the clock from the time recorded at step N. Time spent in a killed
segment after its last checkpoint is not counted (those steps are trained again and counted then). Dev
evaluation is excluded from the training clock and timed apart.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

from transformers import TrainerCallback

log = logging.getLogger(__name__)


class WallClock(TrainerCallback):
    """Cumulative training wall seconds (``train_wall_s``) logged at every step. With ``budget_s``, training
    stops (with a checkpoint) at the first step that ends past the budget.

    A file ``PAUSE`` in ``pause_dir`` (the run folder) holds the run after its current step until the file is
    removed, and the pause is not training time: it frees the CPU for something else (a benchmark that must
    not share it) without stopping the run or skewing its clock.
    """

    def __init__(self, budget_s: float | None = None, pause_dir: Path | None = None) -> None:
        self.budget_s = budget_s
        self.pause_file = Path(pause_dir) / "PAUSE" if pause_dir else None
        self.paused_s = 0.0
        self.stopped_by_budget = False
        self.total = 0.0
        self.excluded = 0.0  # seconds of dev evaluation / snapshots inside the current step interval
        self.segment_steps: list[float] = []
        self._last = 0.0  # set at the start of training

    def exclude(self, seconds: float) -> None:
        self.excluded += seconds

    def on_train_begin(self, args, state, control, **kw):
        prev = [e["train_wall_s"] for e in state.log_history if "train_wall_s" in e]
        self.total = prev[-1] if prev else 0.0
        self._last = time.perf_counter()
        self.excluded = 0.0

    def on_step_end(self, args, state, control, **kw):
        now = time.perf_counter()
        dt = now - self._last - self.excluded
        self._last, self.excluded = now, 0.0
        self.total += dt
        self.segment_steps.append(dt)
        state.log_history.append({"step": state.global_step, "step_wall_s": round(dt, 3), "train_wall_s": round(self.total, 3)})
        if self.pause_file is not None and self.pause_file.exists():
            log.info("paused at step %d (%s exists; remove it to go on)", state.global_step, self.pause_file)
            t0 = time.perf_counter()
            while self.pause_file.exists():
                time.sleep(2)
            held = time.perf_counter() - t0
            self.paused_s += held
            self._last += held  # the pause is not part of the next step's interval
            log.info("resumed after a pause of %.0f s", held)
        if self.budget_s and self.total >= self.budget_s and state.global_step < state.max_steps:
            log.info("training budget of %.0f s reached at step %d: stopping", self.budget_s, state.global_step)
            self.stopped_by_budget = True
            control.should_training_stop = True
            control.should_save = True


def write_snapshot(folder: Path, step: int, examples: int, train_wall_s: float) -> dict:
    """``snapshot.json``: where in the run an adapter was kept (what the learning curve plots)."""
    meta = {"step": step, "examples": examples, "train_wall_s": train_wall_s}
    (folder / "snapshot.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


class Snapshots(TrainerCallback):
    """Keep the adapter when the run has seen each of ``at`` training examples: ``<out>/curve/step-N/`` with
    ``snapshot.json`` (step, examples seen, cumulative training seconds) and the run record."""

    def __init__(self, at: list[int], examples_per_step: int, out: Path, clock: WallClock, write_meta: Callable[[Path, int], None]):
        self.at = sorted(set(int(x) for x in at))
        self.examples_per_step = examples_per_step
        self.dir = out / "curve"
        self.clock = clock
        self.write_meta = write_meta

    def due(self, step: int) -> bool:
        seen, before = step * self.examples_per_step, (step - 1) * self.examples_per_step
        return any(before < p <= seen for p in self.at)

    def on_step_end(self, args, state, control, **kw):
        if not state.is_world_process_zero:  # data-parallel: the main process keeps the snapshot
            return
        step = state.global_step
        target = self.dir / f"step-{step}"
        if not self.due(step) or (target / "snapshot.json").is_file():
            return
        t0 = time.perf_counter()
        kw["model"].save_pretrained(str(target))
        self.write_meta(target, step)
        meta = write_snapshot(target, step, step * self.examples_per_step, self.clock.total)
        log.info("learning-curve snapshot: %s (%d examples, %.0f s of training)", target, meta["examples"], meta["train_wall_s"])
        self.clock.exclude(time.perf_counter() - t0)
