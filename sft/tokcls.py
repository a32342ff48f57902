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
import logging
import random
import time
from pathlib import Path
from typing import Any

from medner.config import ConfigError
from medner.data.records import convert
from medner.data.registry import Corpus, RegistryError, get_corpus
from medner.data.windows import make_windows, window_record
from medner.inference.runrecord import write_record
from medner.inference.token_tagger import FAMILY, TokenTagger, bio_labels, load_token_classifier, sub_token_counter, training_features
from medner.prompts.schema import schema_hash
from medner.sft.run_folder import RunFolder, base_model_record, created_now, prepare_machine
from medner.sft.settings import TrainingSettings

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


def check_settings(cfg: TokClsSettings) -> Corpus:
    """Every configuration error before any data or model work, reported together; the corpus."""
    errors = []
    if len(cfg.corpora) != 1:
        errors.append(f"corpora: token classification trains one corpus's tag set, not {len(cfg.corpora)} ({', '.join(cfg.corpora)})")
    choices = {
        "label_subtoken": ("first", "last"),
        "decode": ("argmax", "viterbi"),
        "class_weights": (None, "balanced"),
        "quantization": ("nf4", "none"),
        "dtype": ("bfloat16", "float32"),
    }
    for key, allowed in choices.items():
        if getattr(cfg, key) not in allowed:
            errors.append(f"{key} must be one of {', '.join('null' if a is None else a for a in allowed)}, not {getattr(cfg, key)!r}")
    corpus = None
    try:
        corpus = get_corpus(cfg.corpora[0]) if cfg.corpora else None
    except RegistryError as e:
        errors.append(str(e))
    if errors or corpus is None:
        raise ConfigError("; ".join(errors) or "corpora: name one corpus")
    return corpus


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
    """Token classification, step by step; returns the adapter folder (a rerun with the same settings resumes)."""
    from datasets import Dataset  # heavy: only a training run needs it

    corpus = check_settings(cfg)
    run = RunFolder.open(cfg, RESUME_KEYS)
    model_dir, device, tokenizer = prepare_machine(cfg)
    labels = bio_labels(corpus.label_names)
    data = prepare_data(cfg, run, corpus, tokenizer, labels)
    model, mode = load_model(cfg, model_dir, labels, device)
    record = TokClsRecord(cfg, corpus, labels, model_dir, mode, device, len(data.features), tokenizer)
    trainer, clock, dev_eval = make_trainer(
        cfg, run, model, tokenizer, Dataset.from_list(data.features), data, corpus, labels, record, device
    )
    result, wall = run.train(trainer)
    if not trainer.is_world_process_zero():
        return run.out / "adapter"
    final = run.save_adapter(trainer, record.write)
    steps = trainer.state.global_step
    examples_per_step = cfg.batch_size * cfg.grad_accum * run.world
    run.write_summary(
        trainer,
        "medner token classification",
        family=FAMILY,
        steps=steps,
        train_wall_s=clock.total,
        stopped_by_budget=clock.stopped_by_budget,
        paused_s=clock.paused_s,
        segment_wall_s=wall,
        dev_eval_s=dev_eval.seconds,
        train_examples=len(data.features),
        examples_seen=steps * examples_per_step,
        mean_example_tokens=round(data.mean_tokens, 1),
        mode=mode,
        device=device,
        dev=dev_eval.history,
        best_dev_f1=dev_eval.best_f1,
        train_loss=getattr(result, "training_loss", None),
        world_size=run.world,
        examples_per_step=examples_per_step,
    )
    log.info("adapter written to %s (%d steps, %.0f s)", final, steps, wall)
    return final


@dataclasses.dataclass
class TokClsData:
    features: list[dict]
    dev: list[dict]
    mean_tokens: float


def prepare_data(cfg: TokClsSettings, run: RunFolder, corpus: Corpus, tokenizer, labels: list[str]) -> TokClsData:
    """Training windows (never cutting an entity) as features, dev records; the data manifest written."""
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
    dev = convert(corpus, cfg.dev_split)
    dev = dev[: cfg.dev_examples] if cfg.dev_examples is not None else dev
    if not run.main:
        dev = []  # dev evaluation runs in the main process only
    longest = max(len(f["input_ids"]) for f in features)
    mean_tokens = sum(len(f["input_ids"]) for f in features) / len(features)
    run.write_manifest(
        {
            "corpus": corpus.name,
            "train_records": len(train_records),
            "train_examples": len(features),
            "dev_records": len(dev),
            "longest_example_tokens": longest,
            "mean_example_tokens": round(mean_tokens, 1),
            "labels": labels,
        }
    )
    log.info(
        "data: %d training windows from %d records (longest %d sub-tokens), %d dev records",
        len(features),
        len(train_records),
        longest,
        len(dev),
    )
    return TokClsData(features, dev, mean_tokens)


def load_model(cfg: TokClsSettings, model_dir: Path, labels: list[str], device: str):
    """The base with a BIO head, LoRA on every linear layer of the body, the head trained in full in float32."""
    import torch  # heavy (torch, transformers, peft): only a training run needs them
    from peft import LoraConfig, get_peft_model
    from transformers import BitsAndBytesConfig

    quant, mode = None, "LoRA"
    if cfg.quantization == "nf4":
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
    return model, mode


@dataclasses.dataclass
class TokClsRecord:
    """The run record of a token-classification run, written with the tokenizer into an adapter folder."""

    cfg: TokClsSettings
    corpus: Corpus
    labels: list[str]
    model_dir: Path
    mode: str
    device: str
    train_examples: int
    tokenizer: Any

    def record(self, steps: int) -> dict:
        cfg, corpus = self.cfg, self.corpus
        return {
            "medner_run": 1,
            "family": FAMILY,
            "created": created_now(),
            "corpus": corpus.name,
            "corpora": {corpus.name: {"lang": corpus.lang, "labels": corpus.label_names, "schema_sha256": schema_hash(corpus.label_names)}},
            "lang": corpus.lang,
            "labels": self.labels,
            "window_tokens": cfg.window_tokens,
            "label_subtoken": cfg.label_subtoken,
            "echo": cfg.echo,
            "decode": cfg.decode,
            "dtype": cfg.dtype,
            "base_model": base_model_record(cfg.model, self.model_dir),
            "training": {"mode": self.mode, "device": self.device, "steps": steps, "train_examples": self.train_examples},
        }

    def write(self, folder: Path, steps: int) -> None:
        write_record(folder, self.record(steps))
        self.tokenizer.save_pretrained(str(folder))


# long: the callback and loss classes close over the run's settings and class weights
def make_trainer(
    cfg: TokClsSettings, run: RunFolder, model, tokenizer, ds, data: TokClsData, corpus: Corpus, labels: list[str], record, device: str
):
    """transformers' Trainer (class-weighted loss when asked) with the wall clock and the dev evaluation."""
    import torch  # heavy (torch, transformers): only a training run needs them
    from transformers import DataCollatorForTokenClassification, Trainer, TrainerCallback, TrainingArguments

    from medner.sft.progress import WallClock

    clock = WallClock(cfg.max_train_wall_s, pause_dir=run.out)
    tagger_args = {
        "labels": labels,
        "lang": corpus.lang,
        "window_tokens": cfg.window_tokens,
        "batch_size": cfg.dev_batch_size,
        "label_subtoken": cfg.label_subtoken,
        "echo": cfg.echo,
        "decode": cfg.decode,
    }
    dev_eval = TokClsDevEval(data.dev, tagger_args, run.out, clock, record.write)

    class DevCallback(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if cfg.eval_steps and state.global_step % cfg.eval_steps == 0:
                dev_eval(kw["model"], tokenizer, state)

        def on_train_end(self, args, state, control, **kw):
            dev_eval(kw["model"], tokenizer, state)

    run.log_data_parallel("windows", cfg.batch_size, cfg.grad_accum)
    weights = torch.tensor(balanced_weights(data.features, len(labels))) if cfg.class_weights == "balanced" else None

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

    args = TrainingArguments(
        output_dir=str(run.out),
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
        bf16=device == "cuda" and torch.cuda.is_bf16_supported(),
        use_cpu=device == "cpu",
        report_to=[],
        dataloader_num_workers=0,
        disable_tqdm=False,
        remove_unused_columns=False,
    )
    trainer = TokClsTrainer(
        model=model,
        args=args,
        train_dataset=ds,
        data_collator=DataCollatorForTokenClassification(tokenizer),
        callbacks=[clock, DevCallback()],
    )
    return trainer, clock, dev_eval
