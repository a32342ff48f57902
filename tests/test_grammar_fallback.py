"""Grammar fallback on vLLM's real offline engine (the tiny model): a reply that stays inside its grammar is the
free reply itself; one that leaves it is continued from the tokens before the one that left, under the rest of
the grammar, and ends as vLLM's own grammar-constrained decoding ends it. (On real grounded plans the offline
engine, with fallback, is compared with the server, which masks every step, in test_agree.)"""

import json

import pytest

from medner.data.records import convert
from medner.data.registry import get_corpus
from medner.inference.vllm_engine import VLLMBackend
from medner.prompts.contract import Plan

pytestmark = pytest.mark.slow


def plan(text: str, max_tokens: int, grammar: str | None = None) -> Plan:
    messages = [{"role": "system", "content": "Extract the diseases as JSON."}, {"role": "user", "content": text}]
    return Plan(start=0, text=text, offsets=[], messages=messages, schema={}, max_tokens=max_tokens, prompt_tokens=0, grammar=grammar)


def lit(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)


def test_fallback_gives_the_replies_of_grammar_decoding(tiny_model, strong_adapter):
    engine = VLLMBackend(tiny_model, str(strong_adapter), "auto", 2048, batch_size=16, kv_cache_gib=1, enforce_eager=True)
    texts = [r["text"] for r in convert(get_corpus("ncbi-disease"), "test")[:12]]
    free = [r["raw"] for r in engine.generate([plan(t, 24) for t in texts], constrained=False)]
    assert all(free) and len(set(free)) > 3, free

    # the engine's first grammar call masks (it starts the grammar compiler, as eval's warm-up request does)
    engine.grammar_fallback = True
    first = engine.generate([plan(texts[0], 24, f"root ::= {lit(free[0])}")], constrained=True)
    assert first[0]["raw"] == free[0] and engine.fallback_counts == {"free": 0, "continued": 0}

    # grammars that admit the free reply itself: every reply stays inside, decoded free
    same = engine.generate([plan(t, 24, f"root ::= {lit(r)}") for t, r in zip(texts, free)], constrained=True)
    assert [r["raw"] for r in same] == free and engine.fallback_counts == {"free": 12, "continued": 0}

    # grammars that follow the free reply for a while, then allow only another ending: every reply leaves
    # (inside a token or at a token boundary) and is continued under the rest of the grammar
    cut = [plan(t, 24, f'root ::= {lit(r[: 3 + i % 7])} ("Q" | "ZZ") "!"') for i, (t, r) in enumerate(zip(texts, free))]
    fell = engine.generate(cut, constrained=True)
    assert engine.fallback_counts == {"free": 0, "continued": 12}
    engine.grammar_fallback = False
    masked = engine.generate(cut, constrained=True)
    assert [r["raw"] for r in fell] == [r["raw"] for r in masked]
    assert all(r["raw"][: 3 + i % 7] == free[i][: 3 + i % 7] and r["raw"].endswith(("Q!", "ZZ!")) for i, r in enumerate(fell))
    assert all(r["finish_reason"] == "stop" for r in fell + masked)
    assert [r["output_tokens"] for r in fell] == [r["output_tokens"] for r in masked]
