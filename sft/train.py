"""QLoRA supervised fine-tuning: a thin launcher around TRL's ``SFTTrainer``.

The base model is loaded in 4-bit NF4 with double quantization (bitsandbytes), LoRA adapters (peft)
go on all linear layers, and the data are conversational prompt-completion records, so the loss falls
on the answer only and the model's own (Qwen2.5) chat template renders them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
from collections import Counter
from pathlib import Path
from typing import Any

from medner.config import ConfigError
from medner.data.records import convert
from medner.data.registry import Corpus, RegistryError, get_corpus
from medner.files import sha256_of
from medner.inference.runrecord import RunRecordError, check_adapter, read_record, shipped_adapter, write_record
from medner.prompts.contract import resolve_grounded
from medner.prompts.instructions import INSTRUCTION_VERSION, STYLES, load_pool
from medner.prompts.pairs import record_to_pairs
from medner.prompts.render import template_hash
from medner.prompts.schema import schema_hash
from medner.sft.run_folder import RunFolder, base_model_record, created_now, prepare_machine
from medner.sft.settings import TrainingSettings
from medner.tokenizer import token_counter

log = logging.getLogger(__name__)


@dataclasses.dataclass
class SFTSettings(TrainingSettings):
    """Generative SFT with TRL: prompt-completion pairs in the contract's answer format (several corpora make a
    mixture; ``max_train_examples`` counts pairs; ``dev_*`` settings run eval's hf backend)."""

    # dev generation: at most this many new tokens
    dev_max_new_tokens: int = 256
    # largest share of training pairs whose answer is {"entities":[]} (null = as in the data). Measured on
    # NCBI-disease (46% empty), the only shipped corpus where a 0.2 cap binds: the cap lowered dev F1
    # (see the README), so the default keeps the data's own mix.
    max_empty_fraction: float | None = None
    # prompt templates (prompts/templates/<version>): compact-v1 = label names and one line (cheap to train on;
    # for fine-tuned models), v1 = descriptive labels and the answer format spelled out (for zero-shot). The run
    # record names it; serve, extract and eval query the adapter with it and refuse another.
    prompt_version: str = "compact-v1"
    # chat-style instruction data (prompts/instructions.py): style -> weight, e.g. {canonical: 0.3, instruction: 0.2,
    # subset: 0.2, synonyms: 0.1, descriptions: 0.05, multiturn: 0.15}; null = the canonical prompt only
    instruction_mix: dict[str, float] | None = None
    # longest prompt+answer in tokens; a longer training example stops the run (never truncated)
    max_length: int = 1024
    packing: bool = False
    # flatten each batch into one sequence without padding (sequences kept apart by position_ids). Needs
    # FlashAttention (CUDA): with sdpa/eager attention the examples of a batch attend to each other (a test
    # shows the losses change), so it is refused there
    padding_free: bool = False
    # batches of examples of similar length (less padding when padding_free is off)
    group_by_length: bool = False
    # schema-constrained dev generation (xgrammar) or free decoding
    dev_constrained: bool = True
    # grounded dev generation, as `medner eval run`'s `grounded`: null = ordered when constrained
    dev_grounded: bool | str | None = None
    # share of the training pairs from each corpus of a mixture, e.g. {ncbi-disease: 0.4, bc5cdr: 0.3,
    # cmedqaner: 0.3} (shares sum to 1; with max_train_examples, of that many; a corpus with too few pairs has
    # them repeated in another seeded order); null = each corpus in proportion to its size
    corpus_shares: dict[str, float] | None = None
    # keep the adapter when the run has seen each of these many training examples (<output_dir>/curve/step-N),
    # for a learning curve; null = none
    curve_examples: list[int] | None = None
    # start from this adapter's weights (a folder, or the name of one shipped in models/) and keep training it:
    # its LoRA shape replaces lora_r/lora_alpha/lora_target_modules, its base model and prompt version must be
    # this run's, and the run record and summary count its training with this run's (train_wall_s_total)
    init_adapter: str | None = None


EMPTY_ANSWER = '{"entities":[]}'


# long: one loop over corpora and splits; the manifest rows are written beside the data they describe
def build_datasets(cfg: SFTSettings):
    """Training pairs of the mixture, dev pairs (with their records), and the data manifest."""

    count = token_counter()
    train, dev, manifest = [], {}, []
    mix = check_mix(cfg.instruction_mix)
    draw = random.Random(f"{cfg.seed}:instructions") if mix else None
    for name in cfg.corpora:
        corpus = get_corpus(name)
        for split in (cfg.train_split, cfg.dev_split):
            path = corpus.file(split)
            if not path.is_file():
                raise ConfigError(f"data file missing for {name} {split}: {path}")
            records = convert(corpus, split)
            if split == cfg.train_split:
                pairs = []
                for rec in records:
                    for p in record_to_pairs(
                        rec, corpus, count, max_window_tokens=cfg.window_tokens, prompt_version=cfg.prompt_version, rng=draw, mix=mix
                    ):
                        p["corpus"] = name
                        pairs.append(p)
                train.extend(pairs)
                row = {"pairs": len(pairs)}
            else:
                # the first dev_examples records in file order: the records `medner eval run split=dev limit=N` takes
                dev[name] = records[: cfg.dev_examples] if cfg.dev_examples is not None else records
                row = {"dev_records_evaluated": len(dev[name])}
            manifest.append({"corpus": name, "split": split, "file": str(path), "sha256": sha256_of(path), "records": len(records), **row})
    rng = random.Random(cfg.seed)
    rng.shuffle(train)
    if cfg.max_empty_fraction is not None:
        # a cap, never a quota: the seeded order, with empty answers skipped once the cap is reached
        total = min(cfg.max_train_examples or len(train), len(train))
        limit, n_empty = int(cfg.max_empty_fraction * total), 0
        kept: list[dict] = []
        for p in train:
            if len(kept) == total:
                break
            if p["completion"][0]["content"] == EMPTY_ANSWER:
                if n_empty >= limit:
                    continue
                n_empty += 1
            kept.append(p)
        train = kept
    if cfg.corpus_shares:
        train = take_shares(train, cfg.corpus_shares, cfg.max_train_examples or len(train), rng)
    if cfg.max_train_examples:
        train = train[: cfg.max_train_examples]
    return train, dev, manifest


def take_shares(pairs: list[dict], shares: dict[str, float], total: int, rng: random.Random) -> list[dict]:
    """``total`` pairs, ``round(share * total)`` from each corpus, in a seeded order; a corpus's pairs are taken in
    their shuffled order and repeated when it has fewer (each pass over them in a new order)."""
    out: list[dict] = []
    for name, share in shares.items():
        own = [p for p in pairs if p["corpus"] == name]
        want, taken = round(share * total), list[dict]()
        while own and len(taken) < want:
            taken.extend(own[: want - len(taken)])
            own = rng.sample(own, len(own))
        out.extend(taken)
    rng.shuffle(out)
    return out


def check_shares(shares: dict[str, float] | None, corpora: list[str]) -> list[str]:
    """The errors of ``corpus_shares``: every corpus of the mixture named, nothing else, shares summing to 1."""
    if not shares:
        return []
    errors = []
    if sorted(shares) != sorted(corpora):
        errors.append(f"corpus_shares must name exactly the corpora {sorted(corpora)}, not {sorted(shares)}")
    if any(not isinstance(v, int | float) or v < 0 for v in shares.values()):
        errors.append("corpus_shares: every share must be a number >= 0")
    elif abs(sum(shares.values()) - 1) > 1e-6:
        errors.append(f"corpus_shares must sum to 1, not {sum(shares.values()):g}")
    return errors


def check_mix(mix: dict[str, float] | None) -> dict[str, float] | None:
    """The instruction mix, checked: known styles, non-negative weights, some weight."""

    if not mix:
        return None
    unknown = [k for k in mix if k not in STYLES]
    if unknown:
        raise ConfigError(f"instruction_mix: unknown style(s) {unknown}; styles: {', '.join(STYLES)}")
    if any(not isinstance(v, (int, float)) or v < 0 for v in mix.values()) or not sum(mix.values()):
        raise ConfigError("instruction_mix: weights must be non-negative numbers, not all zero")
    return {k: float(v) for k, v in mix.items()}


def style_counts(pairs: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for p in pairs:
        counts[p.get("style", "canonical")] = counts.get(p.get("style", "canonical"), 0) + 1
    return counts


def _length_grouped(trainer_cls, group_size: int, seed: int):
    """``trainer_cls`` drawing its training order from ``ShuffledLengthGroupedSampler``: one optimizer step's
    examples (all processes, all accumulation micro-batches) are of similar length, the steps in random order."""
    from medner.sft.sampling import ShuffledLengthGroupedSampler

    class LengthGroupedTrainer(trainer_cls):
        def _get_train_sampler(self, train_dataset=None):
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            return ShuffledLengthGroupedSampler([len(ids) for ids in dataset["input_ids"]], group_size, seed)

    return LengthGroupedTrainer


def check_lengths(pairs: list[dict], tokenizer, max_length: int) -> tuple[int, float]:
    """Longest and mean tokenized example; raises if any exceeds ``max_length`` (nothing is truncated silently)."""
    longest, worst, total = 0, None, 0
    for p in pairs:
        rendered = tokenizer.apply_chat_template(p["prompt"] + p["completion"], tokenize=False)
        n = len(tokenizer(rendered, add_special_tokens=False)["input_ids"])
        total += n
        if n > longest:
            longest, worst = n, p["id"]
    if longest > max_length:
        raise ConfigError(
            f"training example {worst} is {longest} tokens, longer than max_length={max_length}; raise max_length or lower window_tokens"
        )
    return longest, total / max(1, len(pairs))


# what a run cannot change and still be resumed: the data, the prompts, the model and the adapter's shape
RESUME_KEYS = (
    "model",
    "corpora",
    "train_split",
    "max_train_examples",
    "max_empty_fraction",
    "seed",
    "prompt_version",
    "instruction_mix",
    "corpus_shares",
    "window_tokens",
    "quantization",
    "lora_r",
    "lora_alpha",
    "lora_target_modules",
    "batch_size",
    "grad_accum",
    "init_adapter",
)


def load_model(cfg: SFTSettings, model_dir: Path, device: str):
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kwargs: dict = {"dtype": torch.bfloat16}
    mode = "bf16 LoRA"
    zero3 = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3"  # set by accelerate launch with a ZeRO-3 config
    if cfg.quantization == "nf4":
        try:
            import bitsandbytes  # noqa: F401

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.bfloat16,
                # DeepSpeed ZeRO-3 shards parameters, which it can do for 4-bit weights stored as bf16
                **({"bnb_4bit_quant_storage": torch.bfloat16} if zero3 else {}),
            )
            mode = f"QLoRA (4-bit NF4, double quantization, bitsandbytes {'CUDA' if device == 'cuda' else 'CPU'} backend)"
        except ImportError:
            log.warning("bitsandbytes is not installed: falling back to bf16 LoRA")
    elif cfg.quantization != "none":
        raise ConfigError(f"quantization must be nf4 or none, not {cfg.quantization!r}")
    if device == "cuda" and not zero3:  # ZeRO-3 places (shards) the parameters itself
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", 0))}
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), **kwargs)
    if device == "cpu" and "quantization_config" not in kwargs:
        model = model.to("cpu")
    if cfg.init_adapter:
        from peft import PeftModel  # heavy: only a training run needs it

        folder = shipped_adapter(cfg.init_adapter)
        try:
            check_adapter(folder, base_model_dir=model_dir)
        except RunRecordError as e:
            raise ConfigError(f"init_adapter: {e}") from None
        model = PeftModel.from_pretrained(model, str(folder), is_trainable=True)
        mode += f", continuing {folder}"
    log.info("training mode: %s on %s", mode, device)
    return model, mode


def train(cfg: SFTSettings) -> Path:
    """QLoRA SFT, step by step; returns the adapter folder (a rerun with the same settings resumes)."""
    from datasets import Dataset  # heavy: only a training run needs it

    corpora = check_settings(cfg)
    run = RunFolder.open(cfg, RESUME_KEYS)
    model_dir, device, tokenizer = prepare_machine(cfg)
    data = prepare_data(cfg, run, tokenizer)
    model, mode = load_model(cfg, model_dir, device)
    check_attention(cfg, model)
    prior = prior_training(shipped_adapter(cfg.init_adapter)) if cfg.init_adapter else None
    record = RecordWriter(cfg, corpora, data, model_dir, mode, device, tokenizer, prior)
    trainer, clock, dev_cb = make_trainer(cfg, run, model, tokenizer, Dataset.from_list(data.prompts()), data, record, corpora, device)
    result, wall = run.train(trainer)
    if not trainer.is_world_process_zero():
        return run.out / "adapter"
    return finish(cfg, run, trainer, result, wall, clock, dev_cb, data, record, mode, device)


def check_settings(cfg: SFTSettings) -> dict[str, Corpus]:
    """Every configuration error before any data or model work, reported together; the corpora."""
    errors, corpora = [], {}
    for name in cfg.corpora:
        try:
            corpora[name] = get_corpus(name)
        except RegistryError as e:
            errors.append(str(e))
    try:
        template_hash(cfg.prompt_version)
    except (ValueError, OSError) as e:
        errors.append(f"prompt_version: {e}")
    try:
        resolve_grounded(cfg.dev_grounded, cfg.dev_constrained, "hf")
    except ValueError as e:
        errors.append(f"dev_grounded: {e}")
    try:
        check_mix(cfg.instruction_mix)
    except ConfigError as e:
        errors.append(str(e))
    errors += check_shares(cfg.corpus_shares, cfg.corpora)
    if cfg.quantization not in ("nf4", "none"):
        errors.append(f"quantization must be nf4 or none, not {cfg.quantization!r}")
    if cfg.init_adapter:
        errors += check_init_adapter(cfg)
    if errors:
        raise ConfigError("; ".join(errors))
    return corpora


def check_init_adapter(cfg: SFTSettings) -> list[str]:
    """What keeps ``init_adapter`` from being trained further with these settings (the base model is checked once
    it is resolved, in :func:`load_model`)."""
    folder = shipped_adapter(cfg.init_adapter or "")
    if not (folder / "adapter_config.json").is_file():
        return [f"init_adapter: {folder} holds no adapter_config.json (an adapter folder, or a name in models/)"]
    try:
        rec = check_adapter(folder)
    except RunRecordError as e:
        return [f"init_adapter: {e}"]
    errors = []
    if rec.get("prompt_version") != cfg.prompt_version:
        errors.append(
            f"init_adapter: {folder} was trained with prompt version {rec.get('prompt_version')!r}, this run has {cfg.prompt_version!r}"
        )
    if missing := [c for c in cfg.corpora if c not in rec.get("corpora", {})]:
        log.warning("init_adapter %s was not trained on %s: their types are new to it", folder, ", ".join(missing))
    return errors


def prior_training(folder: Path) -> dict:
    """The training an adapter has had: its own run's and, for one that continued another, that one's too."""
    found = [f for f in (folder / "training_summary.json", folder.parent / "summary.json") if f.is_file()]
    summary = json.loads(found[0].read_text()) if found else {}
    rec = read_record(folder) or {}
    return {
        "adapter": str(folder),
        "adapter_sha256": sha256_of(folder / "adapter_model.safetensors"),
        "train_wall_s_total": summary.get("train_wall_s_total", summary.get("train_wall_s")),
        "examples_seen_total": summary.get("examples_seen_total", summary.get("examples_seen")),
        "instructions": rec.get("instructions"),
        "continued_from": rec.get("training", {}).get("continued_from"),
    }


@dataclasses.dataclass
class TrainingData:
    pairs: list[dict]
    dev: dict[str, list[dict]]  # corpus -> dev records
    longest: int
    mean_tokens: float

    def prompts(self) -> list[dict]:
        return [{"prompt": p["prompt"], "completion": p["completion"]} for p in self.pairs]


def prepare_data(cfg: SFTSettings, run: RunFolder, tokenizer) -> TrainingData:
    """The training pairs (lengths checked) and dev records; the data manifest written."""
    pairs, dev, files = build_datasets(cfg)
    if not pairs:
        raise ConfigError("no training examples")
    longest, mean_tokens = check_lengths(pairs, tokenizer, cfg.max_length)
    if not run.main:
        dev = {}  # dev evaluation runs in the main process only
    run.write_manifest(
        {
            "train_examples": len(pairs),
            "dev_records": sum(len(v) for v in dev.values()),
            "longest_example_tokens": longest,
            "mean_example_tokens": round(mean_tokens, 1),
            "prompt_version": cfg.prompt_version,
            "instruction_mix": cfg.instruction_mix,
            "styles": style_counts(pairs),
            "corpus_shares": cfg.corpus_shares,
            "pairs_per_corpus": dict(Counter(p["corpus"] for p in pairs)),
            "files": files,
        }
    )
    log.info("data: %d training pairs (longest %d tokens), %d dev records", len(pairs), longest, sum(len(v) for v in dev.values()))
    return TrainingData(pairs, dev, longest, mean_tokens)


def check_attention(cfg: SFTSettings, model) -> None:
    attn = getattr(model.config, "_attn_implementation", None) or "sdpa"
    if cfg.padding_free and not str(attn).startswith("flash_attention"):
        raise ConfigError(
            f"padding_free=true needs FlashAttention; this model runs {attn} attention, where the flattened examples "
            "would attend to each other; use group_by_length=true to cut padding instead"
        )


@dataclasses.dataclass
class RecordWriter:
    """The run record of this run (what serve, extract and eval check an adapter against), written with the
    tokenizer into an adapter folder (the result, a learning-curve snapshot, the best dev step)."""

    cfg: SFTSettings
    corpora: dict[str, Corpus]
    data: TrainingData
    model_dir: Path
    mode: str
    device: str
    tokenizer: Any
    prior: dict | None  # the init_adapter's training (prior_training), read once before training changes anything

    def record(self, steps: int) -> dict:
        cfg = self.cfg
        return {
            "medner_run": 1,
            "created": created_now(),
            "prompt_version": cfg.prompt_version,
            "prompt_template_sha256": template_hash(cfg.prompt_version),
            "corpora": {
                n: {
                    "lang": c.lang,
                    "labels": c.label_names,
                    "schema_sha256": schema_hash(c.label_names),
                    "synonyms": {lab.name: dict(lab.synonyms) for lab in c.labels},
                }
                for n, c in self.corpora.items()
            },
            "instructions": (
                {
                    "version": INSTRUCTION_VERSION,
                    "pool_sha256": load_pool().sha256,
                    "mix": cfg.instruction_mix,
                    "styles": style_counts(self.data.pairs),
                }
                if cfg.instruction_mix
                else None
            ),
            "window_tokens": cfg.window_tokens,
            "base_model": base_model_record(cfg.model, self.model_dir),
            "training": {
                "mode": self.mode,
                "device": self.device,
                "steps": steps,
                "train_examples": len(self.data.pairs),
                **({"continued_from": self.prior} if self.prior else {}),
            },
        }

    def write(self, folder: Path, steps: int) -> None:
        write_record(folder, self.record(steps))
        self.tokenizer.save_pretrained(str(folder))


def make_trainer(cfg: SFTSettings, run: RunFolder, model, tokenizer, ds, data: TrainingData, record: RecordWriter, corpora, device: str):
    """TRL's SFTTrainer (length-grouped steps in random order when asked) with the wall clock, the learning-curve
    snapshots and the dev evaluation as callbacks."""
    import torch  # heavy (torch, peft, trl): only a training run needs them
    from peft import LoraConfig
    from trl import SFTTrainer

    from medner.sft.dev_eval import DevEvalCallback
    from medner.sft.progress import Snapshots, WallClock

    peft_cfg = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=cfg.lora_target_modules,
        task_type="CAUSAL_LM",
    )
    args = sft_arguments(cfg, run.out, device == "cuda" and torch.cuda.is_bf16_supported(), device)
    clock = WallClock(cfg.max_train_wall_s, pause_dir=run.out)
    examples_per_step = cfg.batch_size * cfg.grad_accum * run.world
    run.log_data_parallel(
        f"examples (learning rate {cfg.learning_rate:g} per step) of the {len(data.pairs)} pairs", cfg.batch_size, cfg.grad_accum
    )
    dev_cb = DevEvalCallback(data.dev, tokenizer, corpora, run.out, cfg, clock=clock)
    callbacks = [clock, dev_cb]
    if cfg.curve_examples:
        callbacks.insert(1, Snapshots(cfg.curve_examples, examples_per_step, run.out, clock, record.write))
    trainer_cls = _length_grouped(SFTTrainer, examples_per_step, cfg.seed) if cfg.group_by_length else SFTTrainer
    # a model that already carries the init_adapter's LoRA is trained as it is
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=ds,
        processing_class=tokenizer,
        peft_config=None if cfg.init_adapter else peft_cfg,
        callbacks=callbacks,
    )
    dev_cb.trainer = trainer
    return trainer, clock, dev_cb


def sft_arguments(cfg: SFTSettings, out: Path, bf16: bool, device: str):
    from trl import SFTConfig  # heavy: only a training run needs it

    return SFTConfig(
        output_dir=str(out),
        # check_lengths has already refused any example over max_length; TRL refuses to enforce it padding-free
        max_length=None if cfg.padding_free else cfg.max_length,
        packing=cfg.packing,
        padding_free=cfg.padding_free,
        # length grouping is ours (sft/sampling.py): transformers' keeps each stretch sorted long to short
        train_sampling_strategy="random",
        completion_only_loss=True,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
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
        bf16=bf16,
        use_cpu=device == "cpu",
        report_to=[],
        dataloader_num_workers=0,
        dataset_num_proc=None,
        disable_tqdm=False,
        include_num_input_tokens_seen=True,
    )


def finish(cfg: SFTSettings, run: RunFolder, trainer, result, wall: float, clock, dev_cb, data: TrainingData, record, mode, device) -> Path:
    """The adapter with its record, the best dev step's record, the summary (and the dev alarms logged)."""
    from medner.sft.progress import write_snapshot  # heavy (transformers callbacks): only a training run needs it

    final = run.save_adapter(trainer, record.write)
    steps = trainer.state.global_step
    examples_per_step = cfg.batch_size * cfg.grad_accum * run.world
    write_snapshot(final, steps, steps * examples_per_step, clock.total)
    if dev_cb.best_dir.is_dir():
        write_record(dev_cb.best_dir, record.record(steps))
    tokens = int(trainer.state.num_input_tokens_seen or 0) - int(getattr(dev_cb, "tokens_at_start", None) or 0)  # this invocation only
    warnings = dev_cb.warnings()
    prior = record.prior or {}
    run.write_summary(
        trainer,
        None,
        steps=steps,
        # training seconds over every resumed segment (dev evaluation excluded; see sft/progress.py)
        train_wall_s=clock.total,
        stopped_by_budget=clock.stopped_by_budget,
        paused_s=clock.paused_s,
        segment_wall_s=wall,
        step_wall_s=[round(x, 3) for x in clock.segment_steps],
        dev_eval_s=dev_cb.seconds,
        train_examples=len(data.pairs),
        examples_seen=steps * examples_per_step,
        # with init_adapter: its training and this run's together
        train_wall_s_total=clock.total + (prior.get("train_wall_s_total") or 0),
        examples_seen_total=steps * examples_per_step + (prior.get("examples_seen_total") or 0),
        mean_example_tokens=round(data.mean_tokens, 1),
        prompt_version=cfg.prompt_version,
        world_size=run.world,
        examples_per_step=examples_per_step,
        train_tokens=tokens,
        **({"train_tokens_per_s": tokens / wall} if tokens and wall > 0 else {}),
        mode=mode,
        device=device,
        dev=dev_cb.history,
        best_dev_f1=dev_cb.best_f1,
        train_loss=getattr(result, "training_loss", None),
        warnings=warnings,
    )
    for w in warnings:
        log.warning("%s", w)
    log.info("adapter written to %s (%d steps, %.0f s)", final, steps, wall)
    return final
