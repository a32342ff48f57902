"""Token-classification fine-tuning: Qwen2.5 + a BIO head, LoRA through peft, transformers' ``Trainer``.

The classic recipe beside the generative one (:mod:`medner.sft.train`), with the same config conventions:
a commented YAML per machine, ``key=value`` overrides, unknown keys an error, the resolved config saved,
resume after a kill from the newest complete checkpoint, the adapter in ``<output_dir>/adapter/`` with a run
record (``family: token-classification``), a loss curve, dev F1 during training and the best adapter in
``<output_dir>/best``. Alignment, decoding and windows are :mod:`medner.inference.token_tagger`'s, shared with eval and
``/predict``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import random
import resource
import shutil
import time
from pathlib import Path

from medner.config import ConfigError, save_config
from medner.data.records import convert
from medner.data.registry import get_corpus
from medner.data.windows import make_windows, window_record
from medner.inference.models import resolve_model, tokenizer_hash, weights_hash
from medner.inference.runrecord import write_record
from medner.inference.token_tagger import FAMILY, TokenTagger, bio_labels, load_token_classifier, sub_token_counter, training_features
from medner.prompts.schema import schema_hash
from medner.sft.plots import write_loss_curve
from medner.sft.settings import TrainingSettings
from medner.sft.train import check_resumable, latest_checkpoint, pick_device

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TokClsSettings(TrainingSettings):
    """Token classification: a BIO tag head on the base (``corpora`` names one corpus, whose tags it learns; the
    head, ``score``, is trained in full beside the LoRA adapter; ``max_train_examples`` counts windows and
    ``window_tokens`` fed sub-tokens)."""

    output_dir: str = "runs/tokcls"
    # which sub-token of a word carries its tag: last (Qwen2.5 reads left to right: the first position that
    # has seen the whole word) or first (BERT's convention); the others are left out of the loss
    label_subtoken: str = "last"
    # feed each window twice and read the tags on the second copy, which sees the whole window (the words to
    # the right too); twice the tokens
    echo: bool = False
    # decoding at inference: viterbi (BIO-valid best path; measured +0.07 F1 on NCBI-disease, +0.17 on cMedQANER)
    # or argmax (+ CoNLL repair of a stray I-)
    decode: str = "viterbi"
    # null = plain cross-entropy; balanced = weights inversely proportional to each tag's training frequency
    class_weights: str | None = None
    # nf4 (4-bit QLoRA; bitsandbytes) | none (LoRA on bf16/fp32 weights)
    quantization: str = "none"
    # weights' dtype: bfloat16 | float32 (the head is trained in float32 either way)
    dtype: str = "bfloat16"
    dev_examples: int | None = 200
    dev_batch_size: int = 16


# what a run cannot change and still be resumed
RESUME_KEYS = (
    "model",
    "corpora",
    "train_split",
    "max_train_examples",
    "seed",
    "window_tokens",
    "label_subtoken",
    "echo",
    "class_weights",
    "quantization",
    "dtype",
    "lora_r",
    "lora_alpha",
    "lora_target_modules",
    "batch_size",
    "grad_accum",
)


def check_settings(cfg: TokClsSettings) -> None:
    if len(cfg.corpora) != 1:
        raise ConfigError(f"corpora: token classification trains one corpus's tag set, not {len(cfg.corpora)} ({', '.join(cfg.corpora)})")
    choices = {
        "label_subtoken": ("first", "last"),
        "decode": ("argmax", "viterbi"),
        "class_weights": (None, "balanced"),
        "quantization": ("nf4", "none"),
        "dtype": ("bfloat16", "float32"),
    }
    for key, allowed in choices.items():
        if getattr(cfg, key) not in allowed:
            raise ConfigError(f"{key} must be one of {', '.join('null' if a is None else a for a in allowed)}, not {getattr(cfg, key)!r}")


def training_windows(records: list[dict], lang: str, count, cap: int) -> list[dict]:
    """Annotated records -> windows that never cut an entity (the data stage's rule), each a record."""

    out = []
    for r in records:
        if not r["token_offsets"]:
            continue
        wins = make_windows(r["text"], r["token_offsets"], lang, count, cap, r["entities"])
        for k, (s, e) in enumerate(wins):
            w = window_record(r, s, e, r["id"] if len(wins) == 1 else f"{r['id']}#w{k}")
            if w["tokens"]:
                out.append(w)
    return out


def balanced_weights(features: list[dict], n_labels: int) -> list[float]:
    counts = [0] * n_labels
    for f in features:
        for y in f["labels"]:
            if y >= 0:
                counts[y] += 1
    total = sum(counts)
    return [total / (n_labels * c) if c else 0.0 for c in counts]


class TokClsDevEval:
    """Dev F1 during training through :class:`medner.inference.token_tagger.TokenTagger` (the inference path of eval and
    ``/predict``) and eval's scorer; the best adapter goes to ``<output_dir>/best``."""

    def __init__(self, records: list[dict], tagger_args: dict, out: Path, clock, write_meta):
        self.records, self.tagger_args, self.out, self.clock, self.write_meta = records, tagger_args, out, clock, write_meta
        self.best_f1, self.seconds, self.last_step = None, 0.0, -1
        self.history: list[dict] = []

    def __call__(self, model, tokenizer, state) -> None:
        if not self.records or state.global_step == self.last_step:
            return
        t0 = time.perf_counter()
        try:
            self._evaluate(model, tokenizer, state)
        finally:
            took = time.perf_counter() - t0
            self.seconds += took
            self.clock.exclude(took)

    def _evaluate(self, model, tokenizer, state) -> None:
        from medner.eval.score import score

        self.last_step = state.global_step
        was_training = model.training
        model.eval()
        try:
            results = TokenTagger(model, tokenizer, **self.tagger_args).tag_records(self.records)
        finally:
            if was_training:
                model.train()
        preds = {r["id"]: {"id": r["id"], **res} for r, res in zip(self.records, results)}
        micro = score(self.records, preds, bootstrap=0)["seqeval"]["micro"]
        row = {
            "step": state.global_step,
            "dev_f1": micro["f1"],
            "dev_precision": micro["precision"],
            "dev_recall": micro["recall"],
            "dev_examples": len(self.records),
        }
        self.history.append(row)
        state.log_history.append({"step": state.global_step, "dev_f1": row["dev_f1"]})
        log.info(
            "dev @ step %d: strict F1 %.4f (P %.3f R %.3f) on %d records",
            row["step"],
            row["dev_f1"],
            row["dev_precision"],
            row["dev_recall"],
            len(self.records),
        )
        if self.best_f1 is None or row["dev_f1"] > self.best_f1:
            self.best_f1 = row["dev_f1"]
            best = self.out / "best"
            model.save_pretrained(str(best))
            self.write_meta(best, state.global_step)
            (best / "best_step.txt").write_text(f"{row['step']}\n")


def train(cfg: TokClsSettings) -> Path:
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, DataCollatorForTokenClassification, Trainer, TrainerCallback, TrainingArguments

    from medner.sft.progress import WallClock, rank_and_world

    check_settings(cfg)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    rank, world = rank_and_world()
    main = rank == 0  # data-parallel (torchrun / accelerate launch): only the main process writes files
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    check_resumable(cfg, out, RESUME_KEYS)
    if main:
        save_config(cfg, out / "config.resolved.yaml")
    corpus = get_corpus(cfg.corpora[0])
    model_dir = resolve_model(cfg.model)
    device = pick_device(cfg)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = "<|endoftext|>"
    labels = bio_labels(corpus.label_names)
    label2id = {t: i for i, t in enumerate(labels)}

    count = sub_token_counter(tokenizer, corpus.lang)
    train_records = convert(corpus, cfg.train_split)
    windows = training_windows(train_records, corpus.lang, count, cfg.window_tokens)
    random.Random(cfg.seed).shuffle(windows)
    if cfg.max_train_examples:
        windows = windows[: cfg.max_train_examples]
    if not windows:
        raise ConfigError("no training examples")
    features = [training_features(w, tokenizer, label2id, cfg.label_subtoken, cfg.echo) for w in windows]
    dev_records = convert(corpus, cfg.dev_split)
    dev_records = dev_records[: cfg.dev_examples] if cfg.dev_examples is not None else dev_records
    if not main:
        dev_records = []  # dev evaluation runs in the main process only
    longest = max(len(f["input_ids"]) for f in features)
    mean_tokens = sum(len(f["input_ids"]) for f in features) / len(features)
    if main:
        (out / "data_manifest.json").write_text(
            json.dumps(
                {
                    "corpus": corpus.name,
                    "train_records": len(train_records),
                    "train_examples": len(features),
                    "dev_records": len(dev_records),
                    "longest_example_tokens": longest,
                    "mean_example_tokens": round(mean_tokens, 1),
                    "labels": labels,
                },
                indent=2,
            )
            + "\n"
        )
    log.info(
        "data: %d training windows from %d records (longest %d sub-tokens), %d dev records",
        len(features),
        len(train_records),
        longest,
        len(dev_records),
    )

    quant = None
    mode = "LoRA"
    if cfg.quantization == "nf4":
        from transformers import BitsAndBytesConfig

        quant = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16
        )
        mode = "QLoRA (4-bit NF4)"
    model = load_token_classifier(model_dir, labels, cfg.dtype, device, quant)
    targets = cfg.lora_target_modules
    if targets in ("all-linear", ["all-linear"]):
        # every linear layer of the body; the head ("score") is trained in full (peft's modules_to_save for
        # TOKEN_CLS) and must not get LoRA too, as peft's all-linear would give it
        targets = sorted(
            {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and not n.endswith("score")}
        )
    peft_cfg = LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=targets, task_type="TOKEN_CLS"
    )
    model = get_peft_model(model, peft_cfg)
    # the head (peft's modules_to_save copy) learns in float32: bf16 rounding would swallow its small updates
    for name, module in model.named_modules():
        if name.endswith("score.modules_to_save.default"):
            module.float()
            module.register_forward_pre_hook(lambda m, args: (args[0].float(),))
    mode = f"{mode} token classification, {cfg.dtype} weights on {device}"
    log.info("training mode: %s; trainable parameters: %d", mode, sum(p.numel() for p in model.parameters() if p.requires_grad))

    def record_for(steps: int) -> dict:
        return {
            "medner_run": 1,
            "family": FAMILY,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "corpus": corpus.name,
            "corpora": {corpus.name: {"lang": corpus.lang, "labels": corpus.label_names, "schema_sha256": schema_hash(corpus.label_names)}},
            "lang": corpus.lang,
            "labels": labels,
            "window_tokens": cfg.window_tokens,
            "label_subtoken": cfg.label_subtoken,
            "echo": cfg.echo,
            "decode": cfg.decode,
            "dtype": cfg.dtype,
            "base_model": {
                "source": cfg.model,
                "path": str(model_dir),
                "weights_sha256": weights_hash(model_dir),
                "tokenizer_sha256": tokenizer_hash(model_dir),
            },
            "training": {"mode": mode, "device": device, "steps": steps, "train_examples": len(features)},
        }

    def write_meta(folder: Path, steps: int) -> None:
        write_record(folder, record_for(steps))
        tokenizer.save_pretrained(str(folder))

    clock = WallClock(cfg.max_train_wall_s, pause_dir=out)
    dev_eval = TokClsDevEval(
        dev_records,
        {
            "labels": labels,
            "lang": corpus.lang,
            "window_tokens": cfg.window_tokens,
            "batch_size": cfg.dev_batch_size,
            "label_subtoken": cfg.label_subtoken,
            "echo": cfg.echo,
            "decode": cfg.decode,
        },
        out,
        clock,
        write_meta,
    )

    class DevCallback(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if cfg.eval_steps and state.global_step % cfg.eval_steps == 0:
                dev_eval(kw["model"], tokenizer, state)

        def on_train_end(self, args, state, control, **kw):
            dev_eval(kw["model"], tokenizer, state)

    if world > 1 and main:
        log.info(
            "data-parallel: %d processes x batch_size %d x grad_accum %d = %d windows per optimizer step; each process trains on its shard",
            world,
            cfg.batch_size,
            cfg.grad_accum,
            cfg.batch_size * cfg.grad_accum * world,
        )
    weights = torch.tensor(balanced_weights(features, len(labels))) if cfg.class_weights == "balanced" else None

    class TokClsTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if weights is None:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            y = inputs.pop("labels")
            outputs = model(**inputs)
            logits = outputs.logits.float()
            loss = torch.nn.functional.cross_entropy(
                logits.view(-1, logits.size(-1)), y.view(-1), weight=weights.to(logits.device), ignore_index=-100
            )
            return (loss, outputs) if return_outputs else loss

    use_bf16 = device == "cuda" and torch.cuda.is_bf16_supported()
    args = TrainingArguments(
        output_dir=str(out),
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,
        num_train_epochs=cfg.num_epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        gradient_checkpointing=cfg.gradient_checkpointing,
        logging_steps=cfg.logging_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        seed=cfg.seed,
        bf16=use_bf16,
        use_cpu=device == "cpu",
        report_to=[],
        dataloader_num_workers=0,
        disable_tqdm=False,
        remove_unused_columns=False,
    )
    trainer = TokClsTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(features),
        data_collator=DataCollatorForTokenClassification(tokenizer),
        callbacks=[clock, DevCallback()],
    )
    resume = latest_checkpoint(out)
    if resume:
        log.info("resuming from %s", resume.name)
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    wall = time.perf_counter() - t0

    final = out / "adapter"
    if not trainer.is_world_process_zero():
        return final
    trainer.model.save_pretrained(str(final))
    write_meta(final, trainer.state.global_step)
    shutil.copy(out / "config.resolved.yaml", final / "config.resolved.yaml")
    shutil.copy(out / "data_manifest.json", final / "data_manifest.json")
    examples_per_step = cfg.batch_size * cfg.grad_accum * world
    summary = write_loss_curve(trainer.state.log_history, out, title="medner token classification")
    summary.update(
        family=FAMILY,
        steps=trainer.state.global_step,
        train_wall_s=clock.total,
        stopped_by_budget=clock.stopped_by_budget,
        paused_s=clock.paused_s,
        segment_wall_s=wall,
        dev_eval_s=dev_eval.seconds,
        train_examples=len(features),
        examples_seen=trainer.state.global_step * examples_per_step,
        mean_example_tokens=round(mean_tokens, 1),
        mode=mode,
        device=device,
        dev=dev_eval.history,
        best_dev_f1=dev_eval.best_f1,
        train_loss=getattr(result, "training_loss", None),
        world_size=world,
        examples_per_step=examples_per_step,
    )
    if device == "cpu":
        summary["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    log.info("adapter written to %s (%d steps, %.0f s)", final, trainer.state.global_step, wall)
    return final
