"""bench.answer_preference: the decoding-free probe of an adapter's pull towards {"entities":[]}."""

import json
import subprocess
import sys

import pytest
from conftest import ROOT

pytestmark = pytest.mark.slow


def test_the_decision_token_is_where_gold_and_empty_part(tiny_model):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bench.answer_preference import EMPTY_ANSWER, p_open_list

    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    prompt = [{"role": "system", "content": "NER types: Disease."}, {"role": "user", "content": "Familial breast cancer."}]
    gold = '{"entities":[{"text":"breast cancer","type":"Disease"}]}'
    p = p_open_list(model, tok, prompt, gold)
    # the same probability read off a full teacher-forced pass of the gold answer
    g = tok(tok.apply_chat_template(prompt + [{"role": "assistant", "content": gold}], tokenize=False), add_special_tokens=False)[
        "input_ids"
    ]
    e = tok(tok.apply_chat_template(prompt + [{"role": "assistant", "content": EMPTY_ANSWER}], tokenize=False), add_special_tokens=False)[
        "input_ids"
    ]
    k = next(i for i, (a, b) in enumerate(zip(g, e)) if a != b)
    # Qwen2.5 writes `":[{"` and `":[]}` as single tokens: the decision is the token after `{"entities`
    assert tok.decode(g[:k]).endswith('<|im_start|>assistant\n{"entities') and tok.decode(e[k:]).startswith('":[]')
    with torch.no_grad():
        full = torch.softmax(model(torch.tensor([g])).logits[0, k - 1].float(), dim=-1)[g[k]]
    assert p == pytest.approx(float(full), rel=1e-4) and 0.0 < p < 1.0


def test_cli_records_per_corpus_figures(tiny_model, tiny_adapter, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.answer_preference",
            "--model",
            str(tiny_model),
            "--adapter",
            str(tiny_adapter),
            "--corpus",
            "ncbi-disease",
            "--n",
            "3",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("ncbi-disease "))
    fig = json.loads(line.split(" ", 1)[1])
    assert fig["sentences"] == 3 and 0.0 <= fig["mean_p_open_list"] <= 1.0 and fig["opens_list"] in (0.0, 1 / 3, 2 / 3, 1.0)
