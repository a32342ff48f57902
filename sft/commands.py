"""`medner sft train|make-tiny|merge`."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from medner.config import load_config
from medner.inference.models import make_tiny, merge_adapter, merged_model, resolve_model
from medner.inference.runrecord import read_record, write_record
from medner.sft.tokcls import TokClsSettings
from medner.sft.tokcls import train as train_tokcls
from medner.sft.train import SFTSettings
from medner.sft.train import train as train_sft

log = logging.getLogger(__name__)


def _train(a: argparse.Namespace) -> int:
    cfg = load_config(SFTSettings, a.config, a.overrides)
    train_sft(cfg)
    return 0


def _make_tiny(a: argparse.Namespace) -> int:
    out = make_tiny(a.out_dir, layers=a.layers, hidden=a.hidden, seed=a.seed)
    print(out)
    return 0


def _merge(a: argparse.Namespace) -> int:
    rec = read_record(a.adapter)
    if rec and rec.get("family", "generative") != "generative":
        raise ValueError(f"{a.adapter}: a {rec['family']} run: `medner sft merge` merges generative adapters only")
    base = a.model or (rec or {}).get("base_model", {}).get("path")
    if not base:
        raise ValueError(f"{a.adapter}: no run record naming the base model; pass --model")
    base_dir = resolve_model(base)
    out = merge_adapter(a.adapter, base_dir, a.out) if a.out else merged_model(a.adapter, base_dir)
    if rec:
        write_record(out, {**rec, "merged_from_adapter": str(Path(a.adapter).resolve())})
    print(out)
    return 0


def _tokcls_train(a: argparse.Namespace) -> int:
    cfg = load_config(TokClsSettings, a.config, a.overrides)
    train_tokcls(cfg)
    return 0


def add_tokcls_commands(stages) -> None:
    tc = stages.add_parser("tokcls", help="token classification (Qwen2.5 + BIO head + LoRA), the classic baseline").add_subparsers(
        dest="action", required=True
    )
    t = tc.add_parser("train", help="medner tokcls train --config FILE [key=value ...]")
    t.add_argument("--config", required=True)
    t.add_argument("overrides", nargs="*", help="key=value overrides of the config")
    t.set_defaults(func=_tokcls_train)


def add_sft_commands(stages) -> None:
    sft = stages.add_parser("sft", help="QLoRA fine-tuning").add_subparsers(dest="action", required=True)
    t = sft.add_parser("train", help="QLoRA SFT with TRL: medner sft train --config FILE [key=value ...]")
    t.add_argument("--config", required=True)
    t.add_argument("overrides", nargs="*", help="key=value overrides of the config")
    t.set_defaults(func=_train)
    m = sft.add_parser("make-tiny", help="write a tiny random Qwen2 model with the Qwen2.5 tokenizer (tests, demo)")
    m.add_argument("out_dir")
    m.add_argument("--layers", type=int, default=2)
    m.add_argument("--hidden", type=int, default=128)
    m.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    m.set_defaults(func=_make_tiny)
    g = sft.add_parser("merge", help="merge an adapter into its unquantized bf16 base model")
    g.add_argument("--adapter", required=True)
    g.add_argument("--out", help="output folder (default: the merge cache, $MEDNER_CACHE_DIR/merged/<hash>, as serve and eval use it)")
    g.add_argument("--model", help="base model (default: the one in the adapter's run record)")
    g.set_defaults(func=_merge)
