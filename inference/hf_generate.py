"""Batched greedy generation with plain transformers, optionally schema-constrained through xgrammar.

Backend ``hf`` (:class:`HFBackend`), which the SFT dev evaluation
also runs. Grammars are compiled with the answer format's separators
(:data:`medner.prompts.schema.ANSWER_SEPARATORS`), exactly as vLLM's xgrammar backend compiles them with
``disable_any_whitespace``; xgrammar's own default would be ``", "`` and ``": "``, a format the model
never saw in training.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from medner.inference.models import load_causal_lm
from medner.prompts.contract import MAX_MODEL_LEN, Plan, Reply
from medner.prompts.schema import ANSWER_SEPARATORS

_COMPILERS: dict = {}


def _grammar_compiler(tokenizer, vocab_size: int):
    """One xgrammar compiler per tokenizer (building its token table costs seconds); it caches grammars."""
    import xgrammar as xgr

    key = (getattr(tokenizer, "name_or_path", ""), len(tokenizer), vocab_size)
    if key not in _COMPILERS:
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
        _COMPILERS[key] = xgr.GrammarCompiler(info)
    return _COMPILERS[key]


def compile_answer_grammar(compiler, schema: dict):
    """The decoding constraint for one bounded answer schema, in the one answer format."""
    return compiler.compile_json_schema(json.dumps(schema), any_whitespace=False, separators=ANSWER_SEPARATORS, strict_mode=True)


@torch.no_grad()
def generate_batch(
    model,
    tokenizer,
    conversations: Sequence[list[dict]],
    max_new_tokens: Sequence[int] | int,
    schemas: Sequence[dict] | None = None,
    grammars: Sequence[str | None] | None = None,
) -> list[dict]:
    """Generate one reply per conversation. Returns ``[{"raw", "finish_reason", "output_tokens"}]``.

    ``schemas``: constrain each reply to its answer schema; ``grammars``: where an entry is not None,
    constrain that reply to this EBNF grammar instead (grounded decoding).

    ``finish_reason`` is ``stop`` when the model ended its turn and ``length`` when it hit its budget.
    """
    if isinstance(max_new_tokens, int):
        max_new_tokens = [max_new_tokens] * len(conversations)
    prompts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
    tokenizer.padding_side = "left"
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    kwargs = {}
    if schemas is not None:
        from xgrammar.contrib.hf import LogitsProcessor

        compiler = _grammar_compiler(tokenizer, model.config.vocab_size)
        ebnf = list(grammars) if grammars is not None else [None] * len(schemas)
        compiled = [compiler.compile_grammar(g) if g else compile_answer_grammar(compiler, s) for s, g in zip(schemas, ebnf)]
        kwargs["logits_processor"] = [LogitsProcessor(compiled)]
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


# -- backend hf ----------------------------------------------------------------------------------
class HFBackend:
    """``generate`` over batches of ``batch_size`` plans; works on any loaded causal LM (a peft model too,
    as in the SFT dev evaluation)."""

    name = "hf"

    def __init__(self, model, tokenizer, batch_size: int = 16, max_model_len: int = MAX_MODEL_LEN):
        self.model, self.tokenizer = model, tokenizer
        self.batch_size = batch_size
        self.max_model_len = max_model_len
        self.chunk_records = batch_size

    @classmethod
    def load(cls, model_dir: Path, adapter: str | None, merge: bool, batch_size: int, max_model_len: int) -> HFBackend:
        model, tok = load_causal_lm(model_dir, adapter, merge=merge)
        return cls(model, tok, batch_size, max_model_len)

    def generate(self, plans: Sequence[Plan], constrained: bool) -> list[Reply]:
        was_training = self.model.training
        self.model.eval()
        out: list[Reply] = []
        try:
            for i in range(0, len(plans), self.batch_size):
                part = plans[i : i + self.batch_size]
                out += generate_batch(
                    self.model,
                    self.tokenizer,
                    [p["messages"] for p in part],
                    [p["max_tokens"] for p in part],
                    [p["schema"] for p in part] if constrained else None,
                    [p.get("grammar") for p in part] if constrained else None,
                )
        finally:
            if was_training:
                self.model.train()
        return out
