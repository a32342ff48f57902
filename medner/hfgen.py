"""Batched greedy generation with plain transformers, optionally schema-constrained through xgrammar.

Used by the SFT stage's dev evaluation and by eval's ``hf`` backend (the baseline without vLLM).
"""

from __future__ import annotations

import json
import time
from typing import Sequence

import torch


def _grammar_compiler(tokenizer, vocab_size: int):
    import xgrammar as xgr

    info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
    return xgr.GrammarCompiler(info)


@torch.no_grad()
def generate_batch(
    model,
    tokenizer,
    conversations: Sequence[list[dict]],
    max_new_tokens: Sequence[int] | int,
    schemas: Sequence[dict] | None = None,
) -> list[dict]:
    """Generate one reply per conversation. Returns ``[{"raw", "finish_reason", "output_tokens"}]``.

    ``finish_reason`` is ``stop`` when the model ended its turn and ``length`` when it hit its budget.
    """
    if isinstance(max_new_tokens, int):
        max_new_tokens = [max_new_tokens] * len(conversations)
    prompts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
    tokenizer.padding_side = "left"
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    kwargs = {}
    if schemas is not None:
        import xgrammar as xgr
        from xgrammar.contrib.hf import LogitsProcessor

        compiler = _grammar_compiler(tokenizer, model.config.vocab_size)
        grammars = [compiler.compile_json_schema(json.dumps(s), any_whitespace=False) for s in schemas]
        kwargs["logits_processor"] = [LogitsProcessor(grammars)]
    eos = [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")]
    out = model.generate(
        **enc,
        max_new_tokens=max(max_new_tokens),
        do_sample=False,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id,
        **kwargs,
    )
    results = []
    for i, seq in enumerate(out[:, enc["input_ids"].shape[1] :].tolist()):
        n = 0
        stopped = False
        for tid in seq:
            if tid in eos:
                stopped = True
                break
            n += 1
        if n > max_new_tokens[i]:
            n, stopped = max_new_tokens[i], False
        text = tokenizer.decode(seq[:n], skip_special_tokens=True)
        results.append({"raw": text, "finish_reason": "stop" if stopped else "length", "output_tokens": n})
    return results


def generate_all(model, tokenizer, conversations, max_new_tokens, schemas=None, batch_size: int = 8, progress: bool = False):
    """:func:`generate_batch` over batches; adds ``latency_s`` (the batch's wall time) to each result."""
    from tqdm import tqdm

    results: list[dict] = []
    idx = range(0, len(conversations), batch_size)
    for start in tqdm(idx, desc="generate", disable=not progress, unit="batch"):
        sl = slice(start, start + batch_size)
        mnt = max_new_tokens[sl] if not isinstance(max_new_tokens, int) else max_new_tokens
        t = time.perf_counter()
        res = generate_batch(model, tokenizer, conversations[sl], mnt, schemas[sl] if schemas else None)
        dt = time.perf_counter() - t
        for r in res:
            r["latency_s"] = dt
        results.extend(res)
    return results
