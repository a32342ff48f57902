"""Dev evaluation during training: generate on a fixed dev subset, score, keep the best adapter.

Every ``eval_steps`` steps and at the end of training the model generates (greedy, schema-constrained
unless ``dev_constrained: false``) on the same dev pairs; replies are parsed, grounded and scored with
the eval stage's scorer. Dev F1 and the parse rate are logged beside the loss; the adapter with the
best dev F1 is kept in ``<output_dir>/best``. A run whose replies stop parsing or whose F1 collapses
is flagged loudly in the log and in ``summary.json``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from transformers import TrainerCallback

log = logging.getLogger(__name__)


class DevEvalCallback(TrainerCallback):
    def __init__(self, dev_pairs: list[dict], tokenizer, corpora: dict, out: Path, cfg):
        self.pairs = dev_pairs
        self.tokenizer = tokenizer
        self.corpora = corpora
        self.cfg = cfg
        self.best_dir = out / "best"
        self.best_f1 = None
        self.history: list[dict] = []
        self.trainer = None
        self._last_step = -1

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
        if not self.pairs:
            return None
        from medner.data.answer import parse_reply
        from medner.eval.score import score
        from medner.hfgen import generate_all
        from medner.prompts.schema import answer_schema, max_reply_tokens

        self._last_step = state.global_step
        schemas, budgets = [], []
        for p in self.pairs:
            labels = self.corpora[p["corpus"]].label_names
            rec = p["_record"]
            s = answer_schema(labels, rec["text"], len(rec["tokens"]))
            schemas.append(s)
            budgets.append(min(self.cfg.dev_max_new_tokens, max_reply_tokens(s, labels)))
        was_training = model.training
        model.eval()
        try:
            replies = generate_all(
                model, self.tokenizer, [p["prompt"] for p in self.pairs], budgets,
                schemas if self.cfg.dev_constrained else None, batch_size=self.cfg.dev_batch_size,
            )
        finally:
            if was_training:
                model.train()
        preds = {}
        for p, s, r in zip(self.pairs, schemas, replies):
            rec = p["_record"]
            parsed = parse_reply(r["raw"], r["finish_reason"], rec["text"], rec["token_offsets"], s)
            preds[rec["id"]] = {"id": rec["id"], **parsed, "raw": r["raw"]}
        report = score([p["_record"] for p in self.pairs], preds, bootstrap=0)
        n = len(self.pairs)
        parsed_ok = sum(1 for v in preds.values() if v["status"] == "ok")
        gold_mentions = sum(len(p["_record"]["entities"]) for p in self.pairs)
        row = {
            "dev_all_empty": gold_mentions > 0 and all(not v["entities"] and not v["dropped"] for v in preds.values()),
            "step": state.global_step,
            "dev_f1": report["seqeval"]["micro"]["f1"],
            "dev_parse_rate": parsed_ok / n,
            "dev_truncated": report["failures"]["truncated"]["count"],
            "dev_examples": n,
        }
        self.history.append(row)
        state.log_history.append({"step": state.global_step, "dev_f1": row["dev_f1"], "dev_parse_rate": row["dev_parse_rate"]})
        log.info("dev @ step %d: strict F1 %.4f, parsed %d/%d, truncated %d", row["step"], row["dev_f1"], parsed_ok, n, row["dev_truncated"])
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
            out.append(f"step {row['step']}: every dev reply is empty although the dev subset has mentions (the model predicts no entities)")
        if self.best_f1 and self.best_f1 > 0.2 and row["dev_f1"] < 0.5 * self.best_f1:
            out.append(f"step {row['step']}: dev F1 collapsed to {row['dev_f1']:.3f} from a best of {self.best_f1:.3f}")
        return out

    def warnings(self) -> list[str]:
        """Alarms raised by the final dev evaluation (they go into summary.json)."""
        return self._check(self.history[-1]) if self.history else []
