"""A mixture's shares per corpus (sft/train.py ``corpus_shares``): exact counts, repeats for a small corpus,
seeded, and configuration errors reported with the others."""

import random
from collections import Counter

import pytest

from medner.config import ConfigError
from medner.sft.train import SFTSettings, check_settings, check_shares, take_shares


def _pairs() -> list[dict]:
    sizes = {"ncbi-disease": 60, "bc5cdr": 30, "cmedqaner": 5}
    return [{"id": f"{c}-{i}", "corpus": c} for c, n in sizes.items() for i in range(n)]


def test_each_corpus_gets_its_share_and_a_small_one_is_repeated():
    shares = {"ncbi-disease": 0.5, "bc5cdr": 0.3, "cmedqaner": 0.2}
    out = take_shares(_pairs(), shares, 40, random.Random(0))
    assert Counter(p["corpus"] for p in out) == {"ncbi-disease": 20, "bc5cdr": 12, "cmedqaner": 8}
    cmed = Counter(p["id"] for p in out if p["corpus"] == "cmedqaner")
    assert sorted(cmed) == [f"cmedqaner-{i}" for i in range(5)] and sorted(cmed.values()) == [1, 1, 2, 2, 2]  # all 5, then 3 again
    ncbi = [p["id"] for p in out if p["corpus"] == "ncbi-disease"]
    assert len(set(ncbi)) == 20  # a large corpus is not repeated
    # the corpora are interleaved, not in runs
    assert len({p["corpus"] for p in out[:10]}) > 1


def test_shares_are_seeded():
    shares = {"ncbi-disease": 0.5, "bc5cdr": 0.25, "cmedqaner": 0.25}
    a, b = (take_shares(_pairs(), shares, 30, random.Random(7)) for _ in range(2))
    assert a == b and a != take_shares(_pairs(), shares, 30, random.Random(8))


def test_bad_shares_are_named():
    corpora = ["ncbi-disease", "cmedqaner"]
    assert check_shares(None, corpora) == []
    assert check_shares({"ncbi-disease": 0.6, "cmedqaner": 0.4}, corpora) == []
    assert "exactly the corpora" in check_shares({"ncbi-disease": 1.0}, corpora)[0]
    assert "sum to 1" in check_shares({"ncbi-disease": 0.6, "cmedqaner": 0.6}, corpora)[0]
    assert ">= 0" in check_shares({"ncbi-disease": 1.5, "cmedqaner": -0.5}, corpora)[0]


def test_share_errors_come_with_the_other_configuration_errors():
    cfg = SFTSettings(corpora=["ncbi-disease", "bc5cdr"], corpus_shares={"ncbi-disease": 1.0}, quantization="int3")
    with pytest.raises(ConfigError) as e:
        check_settings(cfg)
    assert "corpus_shares" in str(e.value) and "quantization" in str(e.value)
