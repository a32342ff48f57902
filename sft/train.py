"""QLoRA supervised fine-tuning: a thin launcher around TRL's ``SFTTrainer``.

The base model is loaded in 4-bit NF4 with double quantization (bitsandbytes), LoRA adapters (peft)
go on all linear layers, and the data are conversational prompt-completion records, so the loss falls
on the answer only and the model's own (Qwen2.5) chat template renders them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import random
import re
import resource
import shutil
import time
from pathlib import Path

import yaml

from medner.config import ConfigError, save_config
from medner.data.records import convert
from medner.data.registry import get_corpus
from medner.files import sha256_of
from medner.inference.models import resolve_model, tokenizer_hash, weights_hash
from medner.inference.runrecord import write_record
from medner.prompts.contract import resolve_grounded
from medner.prompts.instructions import INSTRUCTION_VERSION, STYLES, load_pool
from medner.prompts.pairs import record_to_pairs
from medner.prompts.render import template_hash
from medner.prompts.schema import schema_hash
from medner.sft.plots import write_loss_curve
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
    # keep the adapter when the run has seen each of these many training examples (<output_dir>/curve/step-N),
    # for a learning curve; null = none
    curve_examples: list[int] | None = None


EMPTY_ANSWER = '{"entities":[]}'


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
                manifest.append(
                    {
                        "corpus": name,
                        "split": split,
                        "file": str(path),
                        "sha256": sha256_of(path),
                        "records": len(records),
                        "pairs": len(pairs),
                    }
                )
            else:
                # the first dev_examples records in file order: the records `medner eval run split=dev limit=N` takes
                dev[name] = records[: cfg.dev_examples] if cfg.dev_examples is not None else records
                manifest.append(
                    {
                        "corpus": name,
                        "split": split,
                        "file": str(path),
                        "sha256": sha256_of(path),
                        "records": len(records),
                        "dev_records_evaluated": len(dev[name]),
                    }
                )
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
    if cfg.max_train_examples:
        train = train[: cfg.max_train_examples]
    return train, dev, manifest


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
    "window_tokens",
    "quantization",
    "lora_r",
    "lora_alpha",
    "lora_target_modules",
    "batch_size",
    "grad_accum",
)


def check_resumable(cfg, out: Path, keys: tuple[str, ...] = RESUME_KEYS) -> None:
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


def pick_device(cfg: SFTSettings) -> str:
    import torch

    if cfg.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA GPU is visible")
    return cfg.device


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
    log.info("training mode: %s on %s", mode, device)
    return model, mode


def train(cfg: SFTSettings) -> Path:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from medner.sft.dev_eval import DevEvalCallback
    from medner.sft.progress import Snapshots, WallClock, write_snapshot

    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    from medner.sft.progress import rank_and_world

    rank, world = rank_and_world()
    main = rank == 0  # data-parallel (torchrun / accelerate launch): only the main process writes files
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    check_resumable(cfg, out)
    if main:
        save_config(cfg, out / "config.resolved.yaml")
    corpora = {name: get_corpus(name) for name in cfg.corpora}  # fail fast on an unknown corpus
    template_hash(cfg.prompt_version)  # fail fast on an unknown prompt version
    try:  # fail fast on a dev decoding setting that cannot apply
        resolve_grounded(cfg.dev_grounded, cfg.dev_constrained, "hf")
    except ValueError as e:
        raise ConfigError(f"dev_grounded: {e}") from None
    model_dir = resolve_model(cfg.model)
    device = pick_device(cfg)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = "<|endoftext|>"

    train_pairs, dev_records, manifest = build_datasets(cfg)
    if not train_pairs:
        raise ConfigError("no training examples")
    longest, mean_tokens = check_lengths(train_pairs, tokenizer, cfg.max_length)
    if not main:
        dev_records = {}  # dev evaluation runs in the main process only
    else:
        (out / "data_manifest.json").write_text(
            json.dumps(
                {
                    "train_examples": len(train_pairs),
                    "dev_records": sum(len(v) for v in dev_records.values()),
                    "longest_example_tokens": longest,
                    "mean_example_tokens": round(mean_tokens, 1),
                    "prompt_version": cfg.prompt_version,
                    "instruction_mix": cfg.instruction_mix,
                    "styles": style_counts(train_pairs),
                    "files": manifest,
                },
                indent=2,
            )
            + "\n"
        )
    log.info(
        "data: %d training pairs (longest %d tokens), %d dev records", len(train_pairs), longest, sum(len(v) for v in dev_records.values())
    )
    ds = Dataset.from_list([{"prompt": p["prompt"], "completion": p["completion"]} for p in train_pairs])

    model, mode = load_model(cfg, model_dir, device)
    attn = getattr(model.config, "_attn_implementation", None) or "sdpa"
    if cfg.padding_free and not str(attn).startswith("flash_attention"):
        raise ConfigError(
            f"padding_free=true needs FlashAttention; this model runs {attn} attention, where the flattened examples "
            "would attend to each other; use group_by_length=true to cut padding instead"
        )
    peft_cfg = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=cfg.lora_target_modules,
        task_type="CAUSAL_LM",
    )
    use_bf16 = device == "cuda" and torch.cuda.is_bf16_supported()
    args = SFTConfig(
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
        bf16=use_bf16,
        use_cpu=device == "cpu",
        report_to=[],
        dataloader_num_workers=0,
        dataset_num_proc=None,
        disable_tqdm=False,
        include_num_input_tokens_seen=True,
    )

    def record_for(steps: int) -> dict:
        return {
            "medner_run": 1,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "prompt_version": cfg.prompt_version,
            "prompt_template_sha256": template_hash(cfg.prompt_version),
            "corpora": {
                n: {
                    "lang": c.lang,
                    "labels": c.label_names,
                    "schema_sha256": schema_hash(c.label_names),
                    "synonyms": {lab.name: dict(lab.synonyms) for lab in c.labels},
                }
                for n, c in corpora.items()
            },
            "instructions": (
                {
                    "version": INSTRUCTION_VERSION,
                    "pool_sha256": load_pool().sha256,
                    "mix": cfg.instruction_mix,
                    "styles": style_counts(train_pairs),
                }
                if cfg.instruction_mix
                else None
            ),
            "window_tokens": cfg.window_tokens,
            "base_model": {
                "source": cfg.model,
                "path": str(model_dir),
                "weights_sha256": weights_hash(model_dir),
                "tokenizer_sha256": tokenizer_hash(model_dir),
            },
            "training": {"mode": mode, "device": device, "steps": steps, "train_examples": len(train_pairs)},
        }

    def write_meta(folder: Path, steps: int) -> None:
        write_record(folder, record_for(steps))
        tokenizer.save_pretrained(str(folder))

    clock = WallClock(cfg.max_train_wall_s, pause_dir=out)
    examples_per_step = cfg.batch_size * cfg.grad_accum * world
    if world > 1 and main:
        log.info(
            "data-parallel: %d processes x batch_size %d x grad_accum %d = %d examples per optimizer step (learning rate %g per step); "
            "each process trains on its shard of the %d pairs",
            world,
            cfg.batch_size,
            cfg.grad_accum,
            examples_per_step,
            cfg.learning_rate,
            len(train_pairs),
        )
    dev_cb = DevEvalCallback(dev_records, tokenizer, corpora, out, cfg, clock=clock)
    callbacks = [clock, dev_cb]
    if cfg.curve_examples:
        callbacks.insert(1, Snapshots(cfg.curve_examples, examples_per_step, out, clock, write_meta))
    trainer_cls = _length_grouped(SFTTrainer, examples_per_step, cfg.seed) if cfg.group_by_length else SFTTrainer
    trainer = trainer_cls(model=model, args=args, train_dataset=ds, processing_class=tokenizer, peft_config=peft_cfg, callbacks=callbacks)
    dev_cb.trainer = trainer
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
    tokenizer.save_pretrained(str(final))
    record = record_for(trainer.state.global_step)
    examples_seen = trainer.state.global_step * examples_per_step
    write_snapshot(final, trainer.state.global_step, examples_seen, clock.total)
    write_record(final, record)
    shutil.copy(out / "config.resolved.yaml", final / "config.resolved.yaml")
    shutil.copy(out / "data_manifest.json", final / "data_manifest.json")
    if dev_cb.best_dir.is_dir():
        write_record(dev_cb.best_dir, record)
    summary = write_loss_curve(trainer.state.log_history, out)
    summary.update(
        steps=trainer.state.global_step,
        # training seconds over every resumed segment (dev evaluation excluded; see sft/progress.py)
        train_wall_s=clock.total,
        stopped_by_budget=clock.stopped_by_budget,
        paused_s=clock.paused_s,
        segment_wall_s=wall,
        step_wall_s=[round(x, 3) for x in clock.segment_steps],
        dev_eval_s=dev_cb.seconds,
        train_examples=len(train_pairs),
        examples_seen=examples_seen,
        mean_example_tokens=round(mean_tokens, 1),
        prompt_version=cfg.prompt_version,
        world_size=world,
        examples_per_step=examples_per_step,
        train_tokens=int(trainer.state.num_input_tokens_seen or 0)
        - int(getattr(dev_cb, "tokens_at_start", None) or 0),  # this invocation only
        mode=mode,
        device=device,
        dev=dev_cb.history,
        best_dev_f1=dev_cb.best_f1,
        train_loss=getattr(result, "training_loss", None),
    )
    if summary["train_tokens"] and wall > 0:
        summary["train_tokens_per_s"] = summary["train_tokens"] / wall
    if device == "cuda":
        summary["peak_gpu_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    else:
        summary["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    warnings = dev_cb.warnings()
    summary["warnings"] = warnings
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    for w in warnings:
        log.warning("%s", w)
    log.info("adapter written to %s (%d steps, %.0f s)", final, trainer.state.global_step, wall)
    return final
