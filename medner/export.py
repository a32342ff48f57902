"""``medner export``: a trained adapter merged into its base, as a Hugging Face folder and optionally a GGUF file.

The folder is what ``merge_adapter`` writes (bf16 safetensors, tokenizer, the run record) plus the adapter's model
card. The GGUF file (``f16`` or ``q8_0``) is written with the ``gguf`` package, the way llama.cpp's converter
writes a Qwen2 model: tensors under the GGUF names (``gguf.TensorNameMap``), the hyperparameters, and the
tokenizer as a GPT-2 style BPE vocabulary with its merges and chat template, so llama.cpp and transformers'
GGUF loader (``from_pretrained(dir, gguf_file=...)``) both read it.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from medner.inference.models import merge_adapter, resolve_model
from medner.inference.runrecord import read_record, shipped_adapter
from medner.pull import pulled_base

log = logging.getLogger(__name__)

GGUF_TYPES = ("f16", "q8_0")


def export(adapter: str, out: str | Path, base: str | None = None, gguf_type: str | None = None) -> dict:
    """Merge ``adapter`` (a folder, or a name shipped in models/) into ``base`` (default: the base its run record
    names) and write ``out``; with ``gguf_type`` also ``out/<name>.<type>.gguf``. Returns the paths written."""
    if gguf_type is not None and gguf_type not in GGUF_TYPES:
        raise ValueError(f"--gguf must be one of {', '.join(GGUF_TYPES)}, not {gguf_type!r}")
    adapter_dir = shipped_adapter(adapter)
    rec = read_record(adapter_dir)
    if rec is None:
        raise ValueError(f"{adapter_dir}: no run record (medner_run.json); not an adapter trained by medner")
    recorded = rec.get("base_model", {}).get("path")
    pulled = pulled_base()
    base_src = base or (recorded if recorded and Path(recorded).is_dir() else (str(pulled) if pulled else None))
    if not base_src:
        raise ValueError(f"{adapter_dir}: its base model is not here; run `medner pull`, or pass --model PATH")
    base_dir = resolve_model(base_src)
    out = Path(out)
    folder = merge_adapter(adapter_dir, base_dir, out)
    card = adapter_dir / "README.md"
    if card.is_file():
        shutil.copy(card, folder / "README.md")
    written = {"folder": str(folder)}
    if gguf_type:
        written["gguf"] = str(write_gguf(folder, folder / f"{adapter_dir.name}.{gguf_type}.gguf", gguf_type))
    return written


def write_gguf(folder: Path, path: Path, gguf_type: str = "f16") -> Path:
    """A Qwen2 Hugging Face folder -> one GGUF file (``f16`` or ``q8_0``)."""
    # heavy optional dependencies, needed only here
    import gguf
    import numpy as np
    import torch
    from safetensors.torch import load_file

    cfg = json.loads((folder / "config.json").read_text())
    if cfg.get("model_type") != "qwen2":
        raise ValueError(f"{folder}: GGUF export handles Qwen2 models, not {cfg.get('model_type')!r}")
    n_layers = int(cfg["num_hidden_layers"])
    names = gguf.TensorNameMap(gguf.MODEL_ARCH.QWEN2, n_layers)
    w = gguf.GGUFWriter(str(path), "qwen2")
    w.add_name(folder.name)
    w.add_context_length(int(cfg.get("max_position_embeddings", 32768)))
    w.add_embedding_length(int(cfg["hidden_size"]))
    w.add_block_count(n_layers)
    w.add_feed_forward_length(int(cfg["intermediate_size"]))
    w.add_head_count(int(cfg["num_attention_heads"]))
    w.add_head_count_kv(int(cfg.get("num_key_value_heads", cfg["num_attention_heads"])))
    w.add_rope_freq_base(float(cfg.get("rope_theta", 1_000_000.0)))
    w.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", 1e-6)))
    ftype = gguf.LlamaFileType.MOSTLY_F16 if gguf_type == "f16" else gguf.LlamaFileType.MOSTLY_Q8_0
    w.add_file_type(ftype)
    _add_tokenizer(w, folder)
    tensors: dict = {}
    for f in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    if cfg.get("tie_word_embeddings"):
        tensors.pop("lm_head.weight", None)  # the loader ties it back to token_embd
    for hf_name, t in tensors.items():
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ValueError(f"{folder}: no GGUF name for tensor {hf_name}")
        data = t.to(torch.float32).numpy()
        if data.ndim == 1:  # norms and biases stay f32, as llama.cpp's converter keeps them
            w.add_tensor(name, data.astype(np.float32))
        elif gguf_type == "f16":
            w.add_tensor(name, data.astype(np.float16))
        else:
            q = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    log.info("wrote %s (%s)", path, gguf_type)
    return path


def _add_tokenizer(w, folder: Path) -> None:
    """The BPE vocabulary, merges, special tokens and chat template of ``folder``'s ``tokenizer.json``."""
    import gguf

    tj = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    vocab: dict[str, int] = dict(tj["model"]["vocab"])
    added = {t["content"]: t for t in tj.get("added_tokens", [])}
    for content, t in added.items():
        vocab[content] = t["id"]
    size = max(vocab.values()) + 1
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [gguf.TokenType.UNUSED] * size
    for tok, i in vocab.items():
        tokens[i] = tok
        types[i] = gguf.TokenType.NORMAL
    for t in added.values():
        types[t["id"]] = gguf.TokenType.CONTROL if t.get("special") else gguf.TokenType.USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"].get("merges", [])]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    tc = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8")) if (folder / "tokenizer_config.json").is_file() else {}
    for key, setter in (("eos_token", w.add_eos_token_id), ("pad_token", w.add_pad_token_id), ("bos_token", w.add_bos_token_id)):
        value = tc.get(key)
        value = value.get("content") if isinstance(value, dict) else value
        if value in vocab:
            setter(vocab[value])
    w.add_add_bos_token(False)
    template = tc.get("chat_template")
    if not template and (folder / "chat_template.jinja").is_file():
        template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    if template:
        w.add_chat_template(template)
