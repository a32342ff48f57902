"""Does an adapter prefer the empty answer? A decoding-free probe of the failure the mixture run showed.

For dev sentences that have mentions, the adapter reads (teacher forcing, transformers, no generation) the prompt
it was trained with and the answer prefix the gold answer shares with ``{"entities":[]}``; the probability of the
gold answer's next token there is the decision to write a mention. Reported per corpus:
its mean and the share of sentences where greedy decoding would open the list. A healthy adapter opens it on
most of them; one that answers ``{"entities":[]}`` everywhere shows a probability near zero here, whatever the
decoding path.

    python -m bench.answer_preference --model PATH --adapter RUN/adapter --corpus ncbi-disease,cmedqaner [--n 50]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from medner.sft.train import EMPTY_ANSWER  # the training data's empty answer, byte for byte


def p_open_list(model, tokenizer, prompt: list[dict], gold: str) -> float:
    """Probability, under teacher forcing, of the first token where the gold answer departs from the empty one:
    the decision to write a mention (greedy decoding writes one when it is above 0.5)."""
    import torch

    def ids(answer: str) -> list[int]:
        text = tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": answer}], tokenize=False)
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    g, e = ids(gold), ids(EMPTY_ANSWER)
    k = next(i for i, (a, b) in enumerate(zip(g, e)) if a != b)
    with torch.no_grad():
        logits = model(torch.tensor([g[:k]])).logits[0, -1].float()
    return float(torch.softmax(logits, dim=-1)[g[k]])


def preference(model, tokenizer, pairs: list[dict]) -> dict:
    """Mean probability of opening a non-empty list, and the share of sentences where greedy decoding would."""
    probs = [p_open_list(model, tokenizer, p["prompt"], p["completion"][0]["content"]) for p in pairs]
    n = len(probs)
    return {"sentences": n, "mean_p_open_list": sum(probs) / n if n else None, "opens_list": sum(q > 0.5 for q in probs) / n if n else None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="base model folder")
    ap.add_argument("--adapter", required=True, help="a medner SFT adapter folder")
    ap.add_argument("--corpus", default="ncbi-disease", help="comma-separated corpora")
    ap.add_argument("--split", default="dev")
    ap.add_argument("--n", type=int, default=50, help="first N sentences with mentions, in file order")
    ap.add_argument("--name", help="record the figures as bench/results/<name>.json (and in BENCHMARKS.md)")
    a = ap.parse_args()

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from medner.data.records import convert
    from medner.data.registry import get_corpus
    from medner.inference.models import resolve_model
    from medner.inference.runrecord import prompt_version_for, read_record
    from medner.prompts.pairs import record_to_pairs
    from medner.tokenizer import token_counter

    adapter = Path(a.adapter)
    version = prompt_version_for(None, read_record(adapter), str(adapter))
    tokenizer = AutoTokenizer.from_pretrained(str(adapter))
    model = AutoModelForCausalLM.from_pretrained(str(resolve_model(a.model)), dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(adapter)).eval()
    count = token_counter()
    result = {"adapter": str(adapter), "prompt_version": version, "split": a.split, "corpora": {}}
    for name in a.corpus.split(","):
        corpus = get_corpus(name)
        pairs = []
        for rec in convert(corpus, a.split):
            if len(pairs) == a.n:
                break
            pairs += [
                p for p in record_to_pairs(rec, corpus, count, prompt_version=version) if p["completion"][0]["content"] != EMPTY_ANSWER
            ][: a.n - len(pairs)]
        result["corpora"][name] = preference(model, tokenizer, pairs)
        print(name, json.dumps(result["corpora"][name]), flush=True)
    if a.name:
        from bench.common import write_result

        metrics = {f"{c}_{k}": v for c, r in result["corpora"].items() for k, v in r.items() if k != "sentences"}
        command = f"python -m bench.answer_preference --model MODEL --adapter {a.adapter} --corpus {a.corpus} --split {a.split} --n {a.n} --name {a.name}"
        write_result(
            a.name,
            metrics,
            command=command,
            notes=f"adapter {adapter} (prompt {version}); first {a.n} {a.split} sentences with mentions per corpus; "
            "mean_p_open_list: mean probability of the gold answer's first token after the prefix it shares with the empty answer; "
            "opens_list: share of sentences where that probability is above 0.5 (greedy decoding writes a mention)",
            extra={"details": result},
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
