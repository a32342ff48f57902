"""Scoring: predicted spans -> BIO on the gold tokens -> seqeval, plus span-level and failure counts.

Nothing is scored leniently: mentions are not de-duplicated or lowercased, a reply that failed to
parse counts as "no entities" *and* is counted as a failure, and a record with no prediction at all
counts as "no entities" and is reported as missing.

Predicted entities with ``start``/``end`` are used as given (after checking that they slice the text);
entities without offsets are grounded on the gold tokens by :mod:`medner.data.ground`. Spans become
BIO tags by the rule of :func:`medner.data.bio.char_spans_to_token_spans` (widen to token edges; on
overlap keep earliest start, then longest); what that rule drops is counted.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from medner.data.bio import char_spans_to_token_spans, spans_to_tags
from medner.data.ground import ground_mentions
from medner.data.records import read_jsonl, record_tags

FAILURES = ("invalid_json", "schema_violation", "truncated", "error", "ungrounded", "offset_mismatch", "missing")
N_EXAMPLES = 5


class PredictionFileError(ValueError):
    pass


def load_predictions(path: str | Path, gold_ids: set[str]) -> dict[str, dict]:
    """Read a predictions JSONL; every problem names its file:line."""
    preds: dict[str, dict] = {}
    for lineno, obj in read_jsonl(path):
        where = f"{path}:{lineno}"
        rid = obj.get("id")
        if not isinstance(rid, str):
            raise PredictionFileError(f"{where}: missing string field 'id'")
        if rid not in gold_ids:
            raise PredictionFileError(f"{where}: unknown id {rid!r} (not in the gold records)")
        if rid in preds:
            raise PredictionFileError(f"{where}: duplicate prediction for id {rid!r}")
        ents = obj.get("entities", [])
        if not isinstance(ents, list):
            raise PredictionFileError(f"{where}: field 'entities' must be a list")
        for j, e in enumerate(ents):
            if not isinstance(e, dict) or not isinstance(e.get("text"), str) or not isinstance(e.get("type"), str):
                raise PredictionFileError(f"{where}: entities[{j}] needs string fields 'text' and 'type'")
            if ("start" in e) != ("end" in e) or any(k in e and not isinstance(e[k], int) for k in ("start", "end")):
                raise PredictionFileError(f"{where}: entities[{j}] needs integer 'start' and 'end' together")
        preds[rid] = obj
    return preds


def _prf(tp: float, fp: float, fn: float) -> dict:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": p, "recall": r, "f1": f, "tp": int(tp), "fp": int(fp), "fn": int(fn)}


def _context(text: str, s: int, e: int, width: int = 40) -> str:
    return f"{text[max(0, s - width) : s]}[{text[s:e]}]{text[e : e + width]}"


def _pred_spans(rec: dict, pred: dict | None, fail: dict) -> list[tuple[int, int, str]]:
    """Character spans of one record's prediction, grounding mention strings where needed."""
    if pred is None:
        fail["missing"].append({"id": rec["id"]})
        return []
    status = pred.get("status", "ok")
    if status in fail and status != "missing":
        fail[status].append({"id": rec["id"], "error": pred.get("error"), "raw": pred.get("raw")})
    for d in pred.get("dropped", []) or []:
        fail["ungrounded"].append({"id": rec["id"], "mention": d.get("text"), "type": d.get("type")})
    text = rec["text"]
    spans, loose = [], []
    for e in pred.get("entities", []):
        if "start" in e:
            if text[e["start"] : e["end"]] != e["text"]:
                fail["offset_mismatch"].append({"id": rec["id"], "mention": e["text"], "type": e["type"]})
                loose.append(e)
            else:
                spans.append((e["start"], e["end"], e["type"]))
        else:
            loose.append(e)
    if loose:
        grounded, dropped = ground_mentions(text, loose, rec["token_offsets"])
        spans += [(g["start"], g["end"], g["type"]) for g in grounded]
        for d in dropped:
            fail["ungrounded"].append({"id": rec["id"], "mention": d["text"], "type": d["type"], "reason": d["reason"]})
    return sorted(spans)


def _match_partial(gold: list[tuple[int, int, str]], pred: list[tuple[int, int, str]]) -> tuple[int, int]:
    """(exact matches, partial matches): exact first, then overlaps of the same type; each gold once."""
    g_left = collections.Counter(gold)
    p_left = []
    exact = 0
    for p in pred:
        if g_left[p] > 0:
            g_left[p] -= 1
            exact += 1
        else:
            p_left.append(p)
    unmatched_gold = list(g_left.elements())
    partial = 0
    for ps, pe, pt in p_left:
        for i, (gs, ge, gt) in enumerate(unmatched_gold):
            if gt == pt and ps < ge and gs < pe:
                partial += 1
                unmatched_gold.pop(i)
                break
    return exact, partial


def _strict_record(rec: dict, p_spans: list[tuple[int, int, str]], counts: np.ndarray, idx: dict[str, int]) -> tuple[list, list]:
    """One record's predicted spans held to BIO on its tokens (kept, dropped), adding the strict span
    matches per type (what seqeval strict counts) to ``counts`` (types x [tp, fp, fn])."""
    offsets = [tuple(o) for o in rec["token_offsets"]]
    kept, dropped = char_spans_to_token_spans(offsets, p_spans)
    g_set = collections.Counter(
        (sp.start, sp.end, sp.label)
        for sp in char_spans_to_token_spans(offsets, [(e["start"], e["end"], e["type"]) for e in rec["entities"]])[0]
    )
    p_set = collections.Counter((sp.start, sp.end, sp.label) for sp in kept)
    for column, pairs in enumerate((g_set & p_set, p_set - g_set, g_set - p_set)):
        for key, n in pairs.items():
            if key[2] in idx:
                counts[idx[key[2]], column] += n
    return kept, dropped


def strict_counts(gold: Sequence[dict], preds: dict[str, dict], labels: Sequence[str]) -> np.ndarray:
    """Per record and type of ``labels``, the strict [tp, fp, fn] that :func:`score` sums (records x types x 3):
    the input of a paired bootstrap over records. Spans are held to BIO as in :func:`score`, then types outside
    ``labels`` are left out."""
    idx = {lab: i for i, lab in enumerate(labels)}
    counts = np.zeros((len(gold), len(labels), 3))
    fail: dict[str, list] = {k: [] for k in FAILURES}
    for r_i, rec in enumerate(gold):
        _strict_record(rec, _pred_spans(rec, preds.get(rec["id"]), fail), counts[r_i], idx)
    return counts


# long: the report's figures in one pass: seqeval strict, per type, failures, bootstrap intervals, mention-level checks
def score(gold: Sequence[dict], preds: dict[str, dict], bootstrap: int = 1000, seed: int = 0, with_text: bool = True) -> dict:
    """The full report (see ``report.json`` in the README). Scores are fractions 0-1."""
    fail: dict[str, list] = {k: [] for k in FAILURES}
    y_true, y_pred = [], []
    labels = sorted(
        {e["type"] for r in gold for e in r["entities"]} | {e.get("type") for p in preds.values() for e in p.get("entities", [])}
    )
    idx = {lab: i for i, lab in enumerate(labels)}
    per_rec = np.zeros((len(gold), len(labels), 3))  # tp, fp, fn per record and type (BIO-held spans)
    span_counts: collections.Counter[str] = collections.Counter()
    overlaps_resolved = 0
    fp_counter: collections.Counter = collections.Counter()
    fn_counter: collections.Counter = collections.Counter()
    fp_example: dict = {}
    fn_example: dict = {}
    for r_i, rec in enumerate(gold):
        p_spans = _pred_spans(rec, preds.get(rec["id"]), fail)
        kept, dropped = _strict_record(rec, p_spans, per_rec[r_i], idx)
        overlaps_resolved += len(dropped)
        y_true.append(record_tags(rec))
        y_pred.append(spans_to_tags(len(rec["token_offsets"]), kept))
        # span level on characters, all predicted spans (before the BIO rule)
        g_chars = [(e["start"], e["end"], e["type"]) for e in rec["entities"]]
        exact, partial = _match_partial(g_chars, p_spans)
        span_counts.update(gold=len(g_chars), pred=len(p_spans), exact=exact, partial=partial)
        # error analysis by mention string and type
        gc, pc = collections.Counter(g_chars), collections.Counter(p_spans)
        text = rec["text"]
        for (s, e, t), n in (pc - gc).items():
            mention = (text[s:e], t)
            fp_counter[mention] += n
            fp_example.setdefault(mention, (rec["id"], _context(text, s, e)))
        for (s, e, t), n in (gc - pc).items():
            mention = (text[s:e], t)
            fn_counter[mention] += n
            fn_example.setdefault(mention, (rec["id"], _context(text, s, e)))

    # seqeval imports scikit-learn and scipy (1.1 s): here, not at the top, so that every CLI call does not pay it
    from seqeval.metrics import classification_report
    from seqeval.scheme import IOB2

    rep = classification_report(y_true, y_pred, mode="strict", scheme=IOB2, output_dict=True, zero_division=0)
    per_type = {
        lab: {"precision": float(v["precision"]), "recall": float(v["recall"]), "f1": float(v["f1-score"]), "support": int(v["support"])}
        for lab, v in rep.items()
        if not lab.endswith(" avg")
    }
    micro = rep.get("micro avg", {"precision": 0.0, "recall": 0.0, "f1-score": 0.0, "support": 0})
    macro = rep.get("macro avg", {"precision": 0.0, "recall": 0.0, "f1-score": 0.0, "support": 0})
    ci, type_ci = _bootstrap(per_rec, labels, bootstrap, seed)
    for lab, bounds in type_ci.items():
        if lab in per_type:
            per_type[lab]["f1_ci95"] = bounds
    sc = span_counts
    exact_prf = _prf(sc["exact"], sc["pred"] - sc["exact"], sc["gold"] - sc["exact"])
    partial_prf = _prf(sc["exact"] + sc["partial"], sc["pred"] - sc["exact"] - sc["partial"], sc["gold"] - sc["exact"] - sc["partial"])

    def examples(rows):
        rows = rows[:N_EXAMPLES]
        if not with_text:
            rows = [{k: v for k, v in r.items() if k in ("id", "type", "reason")} for r in rows]
        return rows

    def top(counter, example):
        out = []
        for (mention, t), n in counter.most_common(20):
            row = {"type": t, "count": n, "id": example[(mention, t)][0]}
            if with_text:
                row.update(mention=mention, context=example[(mention, t)][1])
            out.append(row)
        return out

    return {
        "records": len(gold),
        "predictions": sum(1 for r in gold if r["id"] in preds),
        "seqeval": {
            "mode": "strict",
            "scheme": "IOB2",
            "micro": {
                "precision": float(micro["precision"]),
                "recall": float(micro["recall"]),
                "f1": float(micro["f1-score"]),
                "support": int(micro["support"]),
                "f1_ci95": ci,
            },
            "macro": {"precision": float(macro["precision"]), "recall": float(macro["recall"]), "f1": float(macro["f1-score"])},
            "per_type": per_type,
        },
        "spans": {"exact": exact_prf, "partial": partial_prf},
        "failures": {k: {"count": len(v), "examples": examples(v)} for k, v in fail.items()},
        "overlapping_predictions_resolved": overlaps_resolved,
        # a model of several corpora decodes with all its types; mentions of types outside the corpus are left out
        "other_types_left_out": sum(int(p.get("other_types", 0)) for p in preds.values()),
        "false_positives": top(fp_counter, fp_example),
        "false_negatives": top(fn_counter, fn_example),
    }


def f1_from_counts(counts: np.ndarray) -> np.ndarray:
    """F1 of [tp, fp, fn] counts on the last axis (0 where there is nothing to count)."""
    tp, fp, fn = counts[..., 0], counts[..., 1], counts[..., 2]
    denom = 2 * tp + fp + fn
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)


def _bootstrap(per_rec: np.ndarray, labels: list[str], n: int, seed: int) -> tuple[list[float] | None, dict]:
    """95% percentile bootstrap over records for micro F1 and each type's F1."""
    if n <= 0 or len(per_rec) == 0:
        return None, {}
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(per_rec), size=(n, len(per_rec)))
    sums = per_rec[draws].sum(axis=1)  # (n, types, 3)
    micro = f1_from_counts(sums.sum(axis=1))
    per_type = f1_from_counts(sums)  # (n, types)
    ci = [float(np.percentile(micro, 2.5)), float(np.percentile(micro, 97.5))]
    type_ci = {lab: [float(np.percentile(per_type[:, i], 2.5)), float(np.percentile(per_type[:, i], 97.5))] for i, lab in enumerate(labels)}
    return ci, type_ci


def prefix_cache_share(preds: Iterable[dict]) -> float:
    """Share of the prompt tokens that the engine read from its prefix cache instead of computing (0 when the
    backend does not report it)."""
    preds = list(preds)
    prompt = sum(p.get("prompt_tokens") or 0 for p in preds)
    return sum(p.get("cached_prompt_tokens") or 0 for p in preds) / prompt if prompt else 0.0


def throughput(preds: Iterable[dict], wall_s: float | None = None) -> dict | None:
    """records/s, output tokens/s and latency percentiles from predictions that carry them."""
    rows = [p for p in preds if "latency_s" in p]
    if not rows:
        return None
    lat = np.array([p["latency_s"] for p in rows])
    toks = sum(p.get("output_tokens", 0) or 0 for p in rows)
    wall = wall_s if wall_s else None
    out = {
        "records": len(rows),
        "latency_p50_s": float(np.percentile(lat, 50)),
        "latency_p95_s": float(np.percentile(lat, 95)),
        "output_tokens": int(toks),
    }
    if any("cached_prompt_tokens" in p for p in rows):  # a speed figure is only comparable at a similar cache share
        out.update(prompt_tokens=int(sum(p.get("prompt_tokens") or 0 for p in rows)), prefix_cache_share=prefix_cache_share(rows))
    if wall:
        out.update(wall_s=wall, records_per_s=len(rows) / wall, output_tokens_per_s=toks / wall)
    return out


def dump(obj: dict, path: str | Path) -> None:
    Path(path).write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def pct(x: float | None) -> str:
    """A fraction as a percentage with two decimals, ``-`` when missing (reports and pages)."""
    return "-" if x is None else f"{100 * x:.2f}"
