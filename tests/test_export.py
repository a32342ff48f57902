"""medner export: the merged folder and a GGUF file that transformers' GGUF loader reads back to the same replies."""

import pytest
import torch
from conftest import run_medner
from transformers import AutoModelForCausalLM, AutoTokenizer

from medner.data.records import convert
from medner.data.registry import get_corpus
from medner.prompts.render import build_messages

pytestmark = pytest.mark.slow


def test_gguf_export_gives_the_merged_folders_replies(tiny_adapter, tmp_path):
    out = tmp_path / "merged"
    r = run_medner("export", "--adapter", str(tiny_adapter), "--out", str(out), "--gguf", "f16")
    assert r.returncode == 0, r.stderr[-2000:]
    gguf = out / "adapter.f16.gguf"
    assert (out / "medner_run.json").is_file() and gguf.is_file()
    corpus = get_corpus("ncbi-disease")
    tok = AutoTokenizer.from_pretrained(str(out))
    merged = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    loaded = AutoModelForCausalLM.from_pretrained(str(out), gguf_file=gguf.name, dtype=torch.float32)
    gguf_tok = AutoTokenizer.from_pretrained(str(out), gguf_file=gguf.name)
    same = 0
    for rec in convert(corpus, "test")[:16]:
        prompt = tok.apply_chat_template(
            build_messages(rec["text"], corpus.labels, "en", "compact-v1"), tokenize=False, add_generation_prompt=True
        )
        ids = tok(prompt, return_tensors="pt").input_ids
        assert gguf_tok(prompt, return_tensors="pt").input_ids.tolist() == ids.tolist()
        a = merged.generate(ids, max_new_tokens=24, do_sample=False)
        b = loaded.generate(ids, max_new_tokens=24, do_sample=False)
        same += a.tolist() == b.tolist()
    assert same == 16
