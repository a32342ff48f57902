"""``medner pull``: the base model the shipped adapters (models/) were trained on, fetched and made servable.

The base is the official ``Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF`` file ``qwen2.5-coder-0.5b-instruct-q4_k_m.gguf``,
pinned by sha256. It is downloaded with ``huggingface_hub`` into the usual Hugging Face cache (or taken from a
local copy with ``--from``), checked, and dequantized once into a bf16 Hugging Face folder the same way the
adapters' base was made (so the adapters' run records, which pin the base's weights hash, accept it).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from medner.files import sha256_of
from medner.tokenizer import VENDORED_TOKENIZER

log = logging.getLogger(__name__)

BASE_REPO = "Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF"
BASE_FILE = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
BASE_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
BASE_FOLDER = "Qwen2.5-Coder-0.5B-Instruct-dequant-bf16"


class PullError(ValueError):
    pass


def cache_dir() -> Path:
    """Where the dequantized base lives: ``medner/`` in the Hugging Face cache (``$HF_HOME``, default
    ``~/.cache/huggingface``), beside the downloaded file."""
    return Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface") / "medner"


def pulled_base() -> Path | None:
    """The base model to use: ``$MEDNER_BASE_MODEL`` when set, else the pulled one when present, else None."""
    env = os.environ.get("MEDNER_BASE_MODEL")
    if env:
        return Path(env)
    folder = cache_dir() / BASE_FOLDER
    return folder if (folder / "config.json").is_file() else None


def fetch(local: str | None = None) -> Path:
    """The checked GGUF file: ``local`` if given, else downloaded from the Hub (one clear error offline)."""
    if local:
        path = Path(local)
        if not path.is_file():
            raise PullError(f"{local}: no such file")
    else:
        try:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(BASE_REPO, BASE_FILE))
        except Exception as e:  # offline, no access, no such file: all end the same way for the user
            raise PullError(
                f"cannot download {BASE_REPO}/{BASE_FILE} ({type(e).__name__}); offline, pass a local copy: medner pull --from FILE"
            ) from None
    got = sha256_of(path)
    if got != BASE_SHA256:
        raise PullError(f"{path}: sha256 {got[:16]}... is not the official {BASE_FILE} ({BASE_SHA256[:16]}...); refusing it")
    return path


def dequantize(gguf: Path, out: Path) -> Path:
    """The bf16 folder of ``gguf`` (once): a plain Qwen2 checkpoint with the vendored Qwen2.5 tokenizer."""
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    # heavy optional dependencies, loaded only when there is work to do
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2ForCausalLM

    log.info("dequantizing %s to bf16 in %s (once, about a minute)", gguf.name, out)
    q = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.bfloat16)
    cfg = q.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    model = Qwen2ForCausalLM(cfg).to(torch.bfloat16)
    missing, unexpected = model.load_state_dict(q.state_dict(), strict=False)
    if unexpected or not all("rotary" in k for k in missing):
        raise PullError(f"{gguf}: unexpected tensors for a Qwen2 model ({unexpected[:3]} / {missing[:3]})")
    model.generation_config = q.generation_config
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(str(tmp))
    AutoTokenizer.from_pretrained(str(VENDORED_TOKENIZER)).save_pretrained(str(tmp))
    tmp.rename(out)
    return out


def pull(local: str | None = None) -> Path:
    """Fetch (or take), check and dequantize the base; returns the model folder."""
    gguf = fetch(local)
    out = cache_dir() / BASE_FOLDER
    out.parent.mkdir(parents=True, exist_ok=True)
    return dequantize(gguf, out)
