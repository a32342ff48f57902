"""Settings shared by both training recipes (generative SFT, ``sft/train.py``; token classification,
``sft/tokcls.py``): the data, the LoRA adapter, the optimizer schedule, checkpoints and the dev evaluation.
Each recipe's settings class adds its own fields and may change a default; configs are commented YAML files in
``sft/configs/``."""

from __future__ import annotations

import dataclasses

from medner.data.windows import WINDOW_TOKENS


@dataclasses.dataclass
class TrainingSettings:
    # base model: a Hub id, a local folder or a local .gguf file
    model: str = "Qwen/Qwen2.5-0.5B-Instruct"
    # registered corpora to train on (generative SFT: several make a mixture; token classification: one)
    corpora: list[str] = dataclasses.field(default_factory=lambda: ["ncbi-disease"])
    train_split: str = "train"
    dev_split: str = "dev"
    # cap on training examples after a seeded shuffle (null = all)
    max_train_examples: int | None = None
    output_dir: str = "runs/sft"
    seed: int = 42
    # windowing cap in tokens for long texts (data stage rule); the same cap is used at inference (run record)
    window_tokens: int = WINDOW_TOKENS
    # nf4 (QLoRA; bitsandbytes 4-bit) | none (LoRA on bf16 weights)
    quantization: str = "nf4"
    # auto | cpu | cuda
    device: str = "auto"
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    # "all-linear" or a list of module names
    lora_target_modules: str | list[str] = "all-linear"
    learning_rate: float = 2e-4
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.03
    num_epochs: float = 1.0
    # > 0 overrides num_epochs
    max_steps: int = -1
    batch_size: int = 8
    grad_accum: int = 1
    gradient_checkpointing: bool = False
    logging_steps: int = 1
    # checkpoints for resume every N steps; the newest save_total_limit are kept
    save_steps: int = 50
    save_total_limit: int = 2
    # dev evaluation every eval_steps steps (0 = only at the end) on the first dev_examples records of each
    # corpus's dev split (null = the whole split)
    eval_steps: int = 0
    dev_examples: int | None = 32
    dev_batch_size: int = 8
    # stop (with a checkpoint, then the usual adapter and dev evaluation) once training has taken this many
    # seconds over all resumed segments, dev evaluation excluded; null = no budget
    max_train_wall_s: float | None = None
    # CPU threads for torch (null = torch's default)
    num_threads: int | None = None
