"""Corpus statistics printed by ``medner data convert``: counts only, never corpus text."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Callable, Sequence


def record_stats(records: Sequence[dict], count: Callable[[str], int] | None = None) -> dict:
    per_type = Counter(e["type"] for r in records for e in r["entities"])
    out = {
        "records": len(records),
        "mentions": sum(per_type.values()),
        "mentions_per_type": dict(sorted(per_type.items())),
    }
    if count is not None and records:
        lengths = [count(r["text"]) for r in records]
        out["qwen_tokens"] = {"min": min(lengths), "median": statistics.median(lengths), "max": max(lengths)}
    return out


def format_stats(name: str, split: str, stats: dict, n_pairs: int | None = None) -> str:
    lines = [f"{name} {split}: {stats['records']} records, {stats['mentions']} mentions"]
    lines.append("  per type: " + ", ".join(f"{k} {v}" for k, v in stats["mentions_per_type"].items()))
    if "qwen_tokens" in stats:
        q = stats["qwen_tokens"]
        lines.append(f"  text length in Qwen2.5 tokens: min {q['min']}, median {q['median']}, max {q['max']}")
    if n_pairs is not None:
        lines.append(f"  training pairs (one per window): {n_pairs}")
    return "\n".join(lines)
