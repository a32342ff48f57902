"""Where base models come from: a Hub id, a local folder or a local GGUF file; and the tiny test model.

* A local folder is used as it is.
* A local ``.gguf`` file is dequantized once by transformers (``gguf_file=``) into a plain bf16 folder
  beside it (``<file>.hf/``), which training and vLLM then load (vLLM's own GGUF support is experimental).
* Anything else is taken as a Hugging Face Hub id: the local Hub cache is tried first, then the
  network. Offline, that ends in :class:`ModelSourceError` with one line saying what to pass instead.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path

from medner.tokenizer import VENDORED_TOKENIZER

log = logging.getLogger(__name__)


class ModelSourceError(RuntimeError):
    pass


def resolve_model(model: str) -> Path:
    """Return a local folder holding ``model`` (see the module docstring)."""
    p = Path(model).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise ModelSourceError(f"model folder {p} has no config.json (not a Hugging Face model folder)")
        return p.resolve()
    if p.suffix == ".gguf":
        if not p.is_file():
            raise ModelSourceError(f"GGUF file not found: {p}")
        return gguf_to_folder(p)
    looks_like_hub_id = re.fullmatch(r"[\w.-]+/[\w.-]+", model) and not Path(model.split("/")[0]).exists()
    if not looks_like_hub_id:
        raise ModelSourceError(f"model path not found: {model}")
    return _from_hub(model)


def _from_hub(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(repo_id, local_files_only=True))
        except Exception:
            pass
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            raise OSError("HF_HUB_OFFLINE=1")
        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"]))
    except Exception as e:  # network errors come in many types; all mean the same to the user
        raise ModelSourceError(
            f"model {repo_id!r} is not a local folder or .gguf file, and the Hugging Face Hub cannot provide it "
            f"(offline or no access: {type(e).__name__}); pass model=PATH with a local model folder or a .gguf file instead"
        ) from None


def gguf_to_folder(gguf: Path) -> Path:
    """Dequantize a GGUF checkpoint once into ``<gguf>.hf/`` (bf16 safetensors + tokenizer)."""
    out = gguf.with_name(gguf.name + ".hf")
    if (out / "config.json").is_file() and list(out.glob("*.safetensors")):
        return out.resolve()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("dequantizing %s to a bf16 folder %s (once)", gguf.name, out)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.bfloat16)
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp)
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except Exception:
        tok = AutoTokenizer.from_pretrained(str(VENDORED_TOKENIZER))
    tok.save_pretrained(tmp)
    tmp.rename(out)
    return out.resolve()


def weights_hash(folder: Path) -> str:
    """sha256 over a model folder's weight files (names and bytes), for run records."""
    h = hashlib.sha256()
    files = sorted(list(folder.glob("*.safetensors")) + list(folder.glob("*.bin")))
    for f in files:
        h.update(f.name.encode() + b"\0")
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()


def tokenizer_hash(folder: Path) -> str:
    """sha256 of the tokenizer vocabulary and chat template that a model folder uses."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    h = hashlib.sha256()
    h.update(str(sorted(tok.get_vocab().items())).encode())
    h.update((tok.chat_template or "").encode())
    return h.hexdigest()


def make_tiny(out_dir: str | Path, layers: int = 2, hidden: int = 128, seed: int = 0) -> Path:
    """Write a tiny random Qwen2-architecture model with the real Qwen2.5 tokenizer.

    ``head_dim`` is 64 (2 heads x 64 = 128 hidden), the smallest vLLM's CPU attention accepts.
    """
    import torch
    from transformers import AutoTokenizer, GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    out = Path(out_dir)
    tok = AutoTokenizer.from_pretrained(str(VENDORED_TOKENIZER))
    cfg = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=1,
        head_dim=64,
        max_position_embeddings=32768,  # as Qwen2.5
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(cfg).to(torch.bfloat16)
    model.generation_config = GenerationConfig(eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "README.md").write_text(
        "Tiny random Qwen2-architecture model for medner's tests and demo (not a trained model).\n"
        f"Layers {layers}, hidden {hidden}, head_dim 64, the official Qwen2.5 tokenizer (Apache-2.0).\n",
        encoding="utf-8",
    )
    return out
