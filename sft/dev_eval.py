"""Dev evaluation during training: the eval harness's ``hf`` backend on a fixed dev subset.

Every ``eval_steps`` steps and at the end of training, the model being trained answers the first
``dev_examples`` records of each corpus's dev split through :func:`medner.inference.generation.predict` with
:class:`~medner.inference.hf_generate.HFBackend`: the same planning, decoding constraint, parsing and scoring
as ``medner eval run backend=hf split=dev limit=N max_tokens=<dev_max_new_tokens>``, so the replies
are the ones that command gives for the same weights. Predictions go to ``<output_dir>/dev/step-N/``
(raw replies included, to look at). Dev F1, precision, recall and the parse rate are logged beside the
loss; the adapter with the best dev F1 is kept in ``<output_dir>/best``. A run whose replies stop parsing,
are all empty or whose F1 collapses is flagged loudly in the log and in ``summary.json``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from transformers import TrainerCallback

from medner.inference.generation import predict
from medner.inference.runrecord import decode_wider
from medner.prompts.contract import MAX_MODEL_LEN, resolve_grounded, task_for

log = logging.getLogger(__name__)


def _all_empty(records: list[dict], preds: dict[str, dict]) -> bool:
    """Every reply parsed and empty while the gold has mentions (unparsed replies have their own alarm)."""
    gold = sum(len(r["entities"]) for r in records)
    return gold > 0 and all(
        preds[r["id"]]["status"] == "ok" and not preds[r["id"]]["entities"] and not preds[r["id"]]["dropped"] for r in records
    )


class DevEvalCallback(TrainerCallback):
    def __init__(self, dev_records: dict[str, list[dict]], tokenizer, corpora: dict, out: Path, cfg, clock=None):
        self.records = dev_records  # corpus name -> dev records
        self.out = out
        self.tokenizer = tokenizer
        self.corpora = corpora
        # the types the run record will list: a mixture's dev records are decoded with all of them, as eval does
        self.trained = {"corpora": {name: {"labels": c.label_names} for name, c in corpora.items()}}
        self.cfg = cfg
        self.best_dir = out / "best"
        self.best_f1 = None
        self.history: list[dict] = []
        self.trainer = None
        self._last_step = -1
        self.clock = clock  # a WallClock: dev evaluation time is kept out of the training clock

        self.grounded = resolve_grounded(cfg.dev_grounded, cfg.dev_constrained, "hf")  # as `medner eval run` decodes
        self.seconds = 0.0

    def on_train_begin(self, args, state, control, **kw):
        self.tokens_at_start = None  # set at the first step: a resumed run starts from the checkpoint's count

    def on_step_begin(self, args, state, control, **kw):
        if getattr(self, "tokens_at_start", None) is None:
            self.tokens_at_start = int(state.num_input_tokens_seen or 0)

    def on_step_end(self, args, state, control, **kw):
        if self.cfg.eval_steps and state.global_step % self.cfg.eval_steps == 0:
            self.evaluate(state, kw["model"])

    def on_train_end(self, args, state, control, **kw):
        if state.global_step != self._last_step:
            self.evaluate(state, kw["model"])

    def evaluate(self, state, model) -> dict | None:
        t0 = time.perf_counter()
        try:
            return self._evaluate(state, model)
        finally:
            took = time.perf_counter() - t0
            self.seconds += took
            if self.clock is not None:
                self.clock.exclude(took)

    # long: one dev pass per corpus: generate, score, log, keep the best adapter; the steps share the trainer state
    def _evaluate(self, state, model) -> dict | None:
        if not any(self.records.values()):
            return None
        from medner.eval.score import score
        from medner.inference.hf_generate import HFBackend

        self._last_step = state.global_step
        backend = HFBackend(
            model, self.tokenizer, batch_size=self.cfg.dev_batch_size, max_model_len=MAX_MODEL_LEN
        )  # eval's default: the plans of `medner eval run backend=hf`
        step_dir = self.out / "dev" / f"step-{state.global_step}"
        step_dir.mkdir(parents=True, exist_ok=True)
        preds: dict[str, dict] = {}
        gold: list[dict] = []
        per_corpus: dict[str, float] = {}
        empty_corpora: list[str] = []
        with (step_dir / "predictions.jsonl").open("w", encoding="utf-8") as fh:

            def write(res: dict) -> None:
                preds[res["id"]] = res
                fh.write(json.dumps(res, ensure_ascii=False) + "\n")

            for name, records in self.records.items():
                task = decode_wider(task_for(self.corpora[name], prompt_version=self.cfg.prompt_version), self.trained)
                predict(
                    backend,
                    records,
                    task,
                    write,
                    self.cfg.window_tokens,
                    self.cfg.dev_constrained,
                    self.cfg.dev_max_new_tokens,
                    warm_up=False,
                    grounded=self.grounded,
                )
                gold += records
                if len(self.records) > 1:
                    per_corpus[name] = score(records, {r["id"]: preds[r["id"]] for r in records}, bootstrap=0)["seqeval"]["micro"]["f1"]
                    if _all_empty(records, preds):
                        empty_corpora.append(name)
        report = score(gold, preds, bootstrap=0)
        micro = report["seqeval"]["micro"]
        n = len(gold)
        parsed_ok = sum(1 for v in preds.values() if v["status"] == "ok")
        gold_mentions = sum(len(r["entities"]) for r in gold)
        predicted = sum(len(v["entities"]) for v in preds.values())
        row = {
            "step": state.global_step,
            "dev_f1": micro["f1"],
            "dev_precision": micro["precision"],
            "dev_recall": micro["recall"],
            "dev_parse_rate": parsed_ok / n,
            "dev_truncated": report["failures"]["truncated"]["count"],
            "dev_empty_replies": sum(1 for v in preds.values() if v["status"] == "ok" and not v["entities"] and not v["dropped"]),
            "dev_predicted_mentions": predicted,
            "dev_gold_mentions": gold_mentions,
            # parsed and empty, every one (unparsed replies have their own alarm, not this one)
            "dev_all_empty": _all_empty(gold, preds),
            "dev_examples": n,
        }
        if per_corpus:
            row["dev_f1_by_corpus"] = per_corpus
            # a mixture can fail on one corpus while the other keeps the overall figures up
            row["dev_all_empty_corpora"] = empty_corpora
        self.history.append(row)
        state.log_history.append({"step": state.global_step, "dev_f1": row["dev_f1"], "dev_parse_rate": row["dev_parse_rate"]})
        log.info(
            "dev @ step %d: strict F1 %.4f (P %.3f R %.3f), parsed %d/%d, truncated %d, %d mentions predicted / %d gold",
            row["step"],
            row["dev_f1"],
            row["dev_precision"],
            row["dev_recall"],
            parsed_ok,
            n,
            row["dev_truncated"],
            predicted,
            gold_mentions,
        )
        if self.best_f1 is None or row["dev_f1"] > self.best_f1:
            self.best_f1 = row["dev_f1"]
            model.save_pretrained(str(self.best_dir))
            self.tokenizer.save_pretrained(str(self.best_dir))
            (self.best_dir / "best_step.txt").write_text(f"{row['step']}\n")
        for w in self._check(row):
            log.warning("DEV ALARM: %s", w)
        return row

    def _check(self, row: dict) -> list[str]:
        out = []
        if row["dev_parse_rate"] < 0.5:
            out.append(f"step {row['step']}: only {row['dev_parse_rate']:.0%} of dev replies parse as schema-valid JSON")
        if row.get("dev_all_empty"):
            out.append(
                f"step {row['step']}: every dev reply is empty although the dev subset has mentions (the model predicts no entities)"
            )
        elif row.get("dev_all_empty_corpora"):
            out.append(
                f"step {row['step']}: every dev reply for {', '.join(row['dev_all_empty_corpora'])} is empty although its dev subset has mentions"
            )
        if self.best_f1 and self.best_f1 > 0.2 and row["dev_f1"] < 0.5 * self.best_f1:
            out.append(f"step {row['step']}: dev F1 collapsed to {row['dev_f1']:.3f} from a best of {self.best_f1:.3f}")
        return out

    def warnings(self) -> list[str]:
        """Alarms raised by the final dev evaluation (they go into summary.json)."""
        return self._check(self.history[-1]) if self.history else []
