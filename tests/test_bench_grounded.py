"""The grounded benchmark's instrument: its modes run the same prompts on one engine, so a mode that found the
previous mode's prompts in vLLM's prefix cache would look faster than it is (the first run did: 1.5-1.7x). The
benchmark resets the cache before each pass, records each pass's cached share of prompt tokens, and refuses
throughput ratios between passes whose shares differ."""

import json

import pytest

from bench.grounded import cache_share, check_cache_fair, timed_pass


def test_cache_share_and_the_fairness_check():
    preds = [{"prompt_tokens": 100, "cached_prompt_tokens": 64}, {"prompt_tokens": 100, "cached_prompt_tokens": 32}]
    assert cache_share(preds) == pytest.approx(0.48)
    assert cache_share([{"output_tokens": 3}]) == 0.0  # a backend that does not report it
    check_cache_fair({"schema": 0.40, "grounded": 0.42, "ordered": 0.38})
    with pytest.raises(RuntimeError, match="prefix-cache reuse differs between passes .*grounded 95.0%"):
        check_cache_fair({"schema": 0.40, "grounded": 0.95, "ordered": 0.40})


@pytest.mark.slow
def test_each_pass_starts_from_the_same_prefix_cache(tiny_model, tiny_adapter, tmp_path):
    """On the real offline engine: two passes over the same records, each after a reset, read the same share of
    their prompts from the cache; a third pass without the reset reads more, and the check refuses it."""
    import os

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from medner.data.records import convert
    from medner.data.registry import get_corpus
    from medner.inference.models import resolve_model
    from medner.inference.runrecord import check_adapter
    from medner.inference.vllm_engine import VLLMBackend
    from medner.prompts.contract import task_for

    corpus = get_corpus("ncbi-disease")
    model_dir = resolve_model(str(tiny_model))
    task = task_for(corpus, prompt_version=check_adapter(str(tiny_adapter), model_dir, corpus)["prompt_version"])
    records = [r for r in convert(corpus, "test") if len(r["text"]) > 150][:8]  # prompts of several cache blocks each
    backend = VLLMBackend(model_dir, str(tiny_adapter), "auto", 4096, batch_size=8, kv_cache_gib=1, enforce_eager=True)
    shares = {}
    for name, mode, reset in (("schema", None, True), ("ordered", "ordered", True), ("ordered-no-reset", "ordered", False)):
        preds, wall = timed_pass(backend, records, task, mode, tmp_path / f"{name}.jsonl", reset_cache=reset)
        assert len(preds) == 8 and wall > 0
        assert all(p["prompt_tokens"] > 0 for p in preds.values())
        shares[name] = cache_share(preds.values())
        assert [json.loads(l)["id"] for l in (tmp_path / f"{name}.jsonl").open()] == [r["id"] for r in records]
    # after a reset only the shared instruction (warm-up) is found; without one, whole prompts are
    assert shares["schema"] == pytest.approx(shares["ordered"], abs=0.02), shares
    assert shares["ordered-no-reset"] > shares["schema"] + 0.2, shares
    check_cache_fair({"schema": shares["schema"], "ordered": shares["ordered"]})
    with pytest.raises(RuntimeError, match="not comparable"):
        check_cache_fair(shares)
