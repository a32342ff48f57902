"""Models: where base models come from (a Hub id, a local folder or a local GGUF file), loading a causal LM
with or without its adapter, merged-model caching, hashes, and the tiny test model.

Every stage (sft, serve, eval) loads models through this module; no stage imports another for it.

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
import shutil
from pathlib import Path

from medner.tokenizer import VENDORED_TOKENIZER

log = logging.getLogger(__name__)

# the run record an adapter carries (medner/runrecord.py reads and checks it; merged folders keep a copy)
RECORD_NAME = "medner_run.json"


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


_HASHES: dict[tuple, str] = {}


def weights_hash(folder: Path) -> str:
    """sha256 over a model folder's weight files (names and bytes), for run records and merge keys.
    Memoized per process on the files' names, sizes and mtimes (a 0.5B model is 1 GB to read)."""
    files = sorted(list(Path(folder).glob("*.safetensors")) + list(Path(folder).glob("*.bin")))
    key = tuple((str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    if key not in _HASHES:
        _HASHES[key] = file_hash(files)
    return _HASHES[key]


def tokenizer_hash(folder: Path) -> str:
    """sha256 of the tokenizer vocabulary and chat template that a model folder uses."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    h = hashlib.sha256()
    h.update(str(sorted(tok.get_vocab().items())).encode())
    h.update((tok.chat_template or "").encode())
    return h.hexdigest()


def file_hash(paths) -> str:
    """sha256 over files (names and bytes), in the order given."""
    h = hashlib.sha256()
    for f in paths:
        f = Path(f)
        h.update(f.name.encode() + b"\0")
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()


def adapter_hash(adapter_dir: str | Path) -> str:
    """sha256 over an adapter's weights and LoRA config (what a merge depends on, besides the base)."""
    d = Path(adapter_dir)
    files = [d / "adapter_config.json"] + sorted(d.glob("adapter_model.*"))
    missing = [f.name for f in files if not f.is_file()]
    if missing or len(files) < 2:
        raise ModelSourceError(f"adapter folder {d} lacks {', '.join(missing) or 'adapter_model.safetensors'} (not a peft adapter)")
    return file_hash(files)


def merge_cache_dir() -> Path:
    """Where merged models are cached: ``$MEDNER_CACHE_DIR/merged`` (default ``~/.cache/medner/merged``)."""
    root = os.environ.get("MEDNER_CACHE_DIR") or str(Path.home() / ".cache" / "medner")
    return Path(root).expanduser() / "merged"


def merged_model(adapter_dir: str | Path, base_dir: str | Path) -> Path:
    """The adapter merged into its unquantized bf16 base, as a plain model folder, built once.

    The folder is keyed by the hashes of the base weights and of the adapter, so a retrained adapter (or
    another base) gets a new folder and a stale merge is never served. It is written to a temporary name
    and renamed when complete, so a merge killed half-way is redone, not reused.
    """
    base_dir = Path(base_dir)
    key = hashlib.sha256((weights_hash(base_dir) + adapter_hash(adapter_dir)).encode()).hexdigest()[:16]
    out = merge_cache_dir() / key
    if (out / "config.json").is_file() and list(out.glob("*.safetensors")):
        log.info("merged model (cached): %s", out)
        _copy_record(adapter_dir, out)
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{key}.tmp{os.getpid()}")
    log.info("merging adapter %s into %s -> %s (once)", adapter_dir, base_dir, out)
    merge_adapter(adapter_dir, base_dir, tmp)
    if out.exists():  # another process finished the same merge first
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.rename(out)
    return out


def merge_adapter(adapter_dir: str | Path, base_dir: str | Path, out: str | Path) -> Path:
    """Merge a LoRA adapter into the bf16 base and save the result (with the adapter's tokenizer)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.bfloat16)  # unquantized base
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    out = Path(out)
    merged.save_pretrained(out)
    tok_src = adapter_dir if (Path(adapter_dir) / "tokenizer_config.json").is_file() else base_dir
    AutoTokenizer.from_pretrained(str(tok_src)).save_pretrained(out)
    for name in ("generation_config.json",):
        if (Path(base_dir) / name).is_file() and not (out / name).is_file():
            shutil.copy(Path(base_dir) / name, out / name)
    _copy_record(adapter_dir, out)
    return out


def _copy_record(adapter_dir: str | Path, merged_dir: Path) -> None:
    """A merged model keeps its adapter's run record (prompt version, labels): clients read it from the folder."""

    src = Path(adapter_dir) / RECORD_NAME
    if src.is_file() and not (merged_dir / RECORD_NAME).is_file():
        shutil.copy(src, merged_dir / RECORD_NAME)


def on_cpu_build() -> bool:
    """True when no CUDA GPU is visible: vLLM runs its CPU build (where LoRA serving is slow and mixes
    base and adapter requests, so adapters are merged instead)."""
    import torch

    return not torch.cuda.is_available()


def load_causal_lm(model_dir: str | Path, adapter: str | Path | None = None, merge: bool = False, device: str | None = None):
    """(model, tokenizer) for generation: bf16, eval mode, the adapter applied unmerged (peft) or merged."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = Path(model_dir)
    if adapter and merge:
        src, adapter = merged_model(adapter, model_dir), None
    tokenizer = AutoTokenizer.from_pretrained(str(src))
    model = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.bfloat16)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
    model.eval()
    return model, tokenizer


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
