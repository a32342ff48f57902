"""Chat-style extraction, measured: one served model, the test records of each corpus asked in several ways.

    python -m bench.chat --model BASE --adapter ADAPTER [--limit 200] [--corpora ncbi-disease,bc5cdr,cmedqaner]
        [--full-split] [--variants canonical,...]
    python -m bench.chat --rescore [--name chat]   # the result's metrics again from its saved predictions

Every query goes to a real ``medner serve`` (the adapter merged, vLLM's CPU build) the way ``medner api``'s chat
endpoint sends it: the conversation as written, decoded under the grounded grammar of its text message
(``medner.serve.chat``). Spans are mapped back to the record's text and scored with eval's seqeval strict scorer.

Variants, each on the same records:
* ``canonical``      the trained compact prompt (system line naming the corpus's types, the text as user turn);
* ``heldout_en/zh``  the instruction pool's *held-out* phrasings (never trained), English and Chinese;
* ``synonyms``       held-out phrasings with the types in synonyms users write (data/corpora.yaml);
* ``cross_language`` held-out phrasings in the other language than the text;
* ``subset``         one type at a time (held-out phrasings): per-type F1 against that type under the full query,
                     with each type's gold mentions; the max drop over all types and over those with at least
                     ``MIN_SUBSET_SUPPORT`` mentions;
* ``absent``         only types absent from the record: the share answered ``{"entities":[]}`` (the endpoint's
                     content, asked types kept), and the share the model itself wrote so;
* ``labels_alone``   one type at a time in the canonical line naming that type alone (what ``labels`` in
                     /v1/extract sends): per-type F1 against the canonical query; ``empty_on_absent_types_full_query``
                     is the share of records with absent types whose canonical (all types) answer holds none of them;
* ``untrained``      zero-shot: the canonical prompt with each type under a name the model never saw and no synonym
                     of it (``UNTRAINED``: "Pathology" for Disease), scored with the names mapped back. What a
                     user asking for a type outside the run record gets (with a warning): decoded with the asked
                     names alone (``decode_types``).
Every query is decoded as the endpoint does: the grammar admits every type the model was trained on, the answer
keeps the asked ones.
Writes ``bench/results/chat.json`` (metrics per corpus, with ``train_wall_s``/``train_examples`` from the adapter)
and every query's prediction under ``runs/bench/<name>/<corpus>/<variant>.jsonl``. With ``--full-split`` it also
keeps the learning curve: each adapter benched before (full-split F1 against its training examples and seconds,
carried from the result it replaces) and a projection to the training budget (``projection``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import json
import math
import random
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import numpy as np
from tqdm import tqdm

from bench.common import ROOT, git_commit, medner, report, server, write_result
from medner.data.records import convert
from medner.data.registry import Corpus, Label, get_corpus
from medner.eval.score import f1_from_counts, score, strict_counts
from medner.inference.runrecord import trained_types
from medner.prompts.instructions import load_pool, render_instruction
from medner.prompts.render import build_messages
from medner.serve.chat import answer_content, ground, plan_for_model
from medner.sft.train import prior_training
from medner.tokenizer import load_tokenizer

EMPTY = '{"entities":[]}'
VARIANTS = ("canonical", "heldout_en", "heldout_zh", "synonyms", "cross_language")  # scored as F1 on every record
ALL_VARIANTS = (*VARIANTS, "subset", "absent", "untrained", "labels_alone")
SUBSET_TARGET = 0.02  # a type asked alone within this F1 of the same type under the full query
BOOTSTRAP = 1000  # resamples of the records for the intervals
MIN_SUBSET_SUPPORT = 20  # gold mentions of a type in the subset records for its drop to enter the supported max
TARGETS = {"ncbi-disease": 0.80, "bc5cdr": 0.85, "cmedqaner": 0.665}  # full test split, canonical prompt
BUDGET_S = 5 * 3600  # cumulative train_wall_s the targets allow
# type names no corpus trains, neither as a name nor as a synonym (data/corpora.yaml): zero-shot requests
UNTRAINED = {
    "Disease": "Pathology", "Chemical": "Pharmaceutical", "body": "Anatomical site", "crowd": "Cohort",
    "department": "Ward", "disease": "Pathology", "drug": "Pharmaceutical", "feature": "Trait",
    "physiology": "Bodily function", "symptom": "Manifestation", "test": "Assay", "time": "Timing",
    "treatment": "Intervention",
}  # fmt: skip


def query(rec: dict, corpus: Corpus, variant: str, labels: list[Label], i: int, rng: random.Random) -> list[dict]:
    """The messages of one variant for one record; ``i`` picks the held-out phrasing (round robin)."""
    text = rec["text"]
    heldout = load_pool().phrasings
    other = "zh" if corpus.lang == "en" else "en"
    if variant == "canonical":
        return build_messages(text, labels, corpus.lang, "compact-v1")
    lang = {"heldout_en": "en", "heldout_zh": "zh", "cross_language": other}.get(variant, corpus.lang)
    form = "synonym" if variant == "synonyms" else "word"
    index = i % len(heldout[lang]["heldout"])
    return render_instruction(text, labels, lang, index, part="heldout", form=form, rng=rng)


async def ask(http: httpx.AsyncClient, url: str, messages: list[dict], labels: list[str], known: list[str], tok, room_for: int) -> dict:
    """One chat request as the chat endpoint sends it with ``labels`` asked: decoded with every ``known``
    (trained) type, the asked ones kept, grounded in the text message; ``content`` is what the endpoint answers."""
    plan = plan_for_model(messages, labels, None, tok, room_for, known)
    body = {
        "model": "ner",
        "messages": messages,
        "temperature": 0,
        "max_tokens": plan["max_tokens"],
        "structured_outputs": {"grammar": plan["grammar"]},
    }
    r = await http.post(f"{url}/chat/completions", json=body)
    r.raise_for_status()
    choice = r.json()["choices"][0]
    out = ground(plan, choice["message"]["content"], choice["finish_reason"], labels)
    out["raw"] = choice["message"]["content"]
    out["content"] = answer_content(out["raw"], out)
    return {**out, "text_message": plan["text"]}


def to_record(rec: dict, res: dict) -> dict:
    """A prediction on the record's own text: spans of the text message shifted to the record (others dropped)."""
    at = res["text_message"].find(rec["text"])
    ents = []
    for e in res["entities"]:
        if at >= 0 and at <= e["start"] and e["end"] <= at + len(rec["text"]):
            ents.append({"text": e["text"], "type": e["type"], "start": e["start"] - at, "end": e["end"] - at})
    return {"id": rec["id"], "entities": ents, "status": res["status"], "raw": res.get("raw"), "content": res.get("content")}


async def run_corpus(
    url: str,
    corpus: Corpus,
    records: list[dict],
    subset_records: int,
    concurrency: int,
    ctx: int,
    known: list[str],
    variants: Sequence[str] = ALL_VARIANTS,
    save: Path | None = None,
) -> dict:
    """The metrics of one corpus; with ``save``, every query's prediction (raw reply, kept entities) as
    ``save/<variant key>.jsonl``, to diff the replies of two variants or two models record by record."""
    tok = load_tokenizer()
    rng = random.Random(0)
    names = corpus.label_names
    jobs: list[tuple[str, str, dict, list[dict], list[str]]] = []  # (variant, key, record, messages, labels)
    for i, rec in enumerate(records):
        for v in (v for v in VARIANTS if v in variants):
            jobs.append((v, v, rec, query(rec, corpus, v, list(corpus.labels), i, rng), names))
        present = {e["type"] for e in rec["entities"]}
        absent = [lab for lab in corpus.labels if lab.name not in present]
        if absent and "absent" in variants:
            jobs.append(("absent", "absent", rec, query(rec, corpus, "heldout_" + corpus.lang, absent, i, rng), [a.name for a in absent]))
        unseen = [
            dataclasses.replace(lab, name=UNTRAINED[lab.name], display=UNTRAINED[lab.name].lower(), synonyms=()) for lab in corpus.labels
        ]
        if "untrained" in variants:
            jobs.append(
                ("untrained", "untrained", rec, build_messages(rec["text"], unseen, corpus.lang, "compact-v1"), [u.name for u in unseen])
            )
        if i < subset_records and "subset" in variants:
            for lab in corpus.labels:
                jobs.append(("subset", f"subset:{lab.name}", rec, query(rec, corpus, "heldout_" + corpus.lang, [lab], i, rng), [lab.name]))
        if i < subset_records and "labels_alone" in variants:
            for lab in corpus.labels:
                jobs.append(("labels_alone", f"labels_alone:{lab.name}", rec, query(rec, corpus, "canonical", [lab], i, rng), [lab.name]))
    preds: dict[str, dict[str, dict]] = {}
    sem = asyncio.Semaphore(concurrency)
    bar = tqdm(total=len(jobs), desc=corpus.name, unit="query")
    async with httpx.AsyncClient(timeout=900) as http:

        async def one(job):
            _, key, rec, messages, labels = job
            async with sem:
                res = await ask(http, url, messages, labels, known, tok, ctx)
            preds.setdefault(key, {})[rec["id"]] = to_record(rec, res)
            bar.update(1)

        t0 = time.perf_counter()
        await asyncio.gather(*(one(j) for j in jobs))
        wall = time.perf_counter() - t0
    bar.close()
    if save is not None:
        save_predictions(save, records, preds)
    metrics = corpus_metrics(records, corpus, preds, variants, subset_records)
    return {**metrics, "queries": len(jobs), "wall_s": round(wall, 1)}


def save_predictions(folder: Path, records: list[dict], preds: dict[str, dict[str, dict]]) -> None:
    """Each variant key's predictions as ``folder/<key>.jsonl`` (``subset:body`` as ``subset-body``), in record order."""
    folder.mkdir(parents=True, exist_ok=True)
    for key, by_id in preds.items():
        with (folder / f"{key.replace(':', '-', 1)}.jsonl").open("w", encoding="utf-8") as f:
            for r in records:
                if r["id"] in by_id:
                    f.write(json.dumps(by_id[r["id"]], ensure_ascii=False) + "\n")


def load_predictions(folder: Path) -> dict[str, dict[str, dict]]:
    """What :func:`save_predictions` wrote, by variant key (the full-split folder is eval's, not read here)."""
    preds: dict[str, dict[str, dict]] = {}
    for path in sorted(folder.glob("*.jsonl")):
        key = path.stem.replace("-", ":", 1) if path.stem.startswith(("subset-", "labels_alone-")) else path.stem
        preds[key] = {(p := json.loads(line))["id"]: p for line in path.open(encoding="utf-8") if line.strip()}
    return preds


def corpus_metrics(
    records: list[dict], corpus: Corpus, preds: dict[str, dict[str, dict]], variants: Sequence[str], subset_records: int
) -> dict:
    """The metrics of one corpus from every query's prediction (``preds``: variant key -> record id -> prediction)."""
    names = corpus.label_names
    f1 = {v: round(score(records, preds[v], bootstrap=0)["seqeval"]["micro"]["f1"], 4) for v in VARIANTS if v in preds}
    out: dict = {"test_records": len(records), **{f"f1_{v}": f for v, f in f1.items()}}
    if "untrained" in preds:
        back = {UNTRAINED[n]: n for n in names}
        renamed = {k: {**p, "entities": [{**e, "type": back[e["type"]]} for e in p["entities"]]} for k, p in preds["untrained"].items()}
        out["f1_untrained_names"] = round(score(records, renamed, bootstrap=0)["seqeval"]["micro"]["f1"], 4)
        out["untrained_names"] = {n: UNTRAINED[n] for n in names}
    if "subset" in variants and "heldout_" + corpus.lang in preds:
        out.update(subset_records=min(subset_records, len(records)))
        out.update(one_type_drops(records[:subset_records], preds, "heldout_" + corpus.lang, "subset", names))
    if "labels_alone" in variants and "canonical" in preds:
        out.update(one_type_drops(records[:subset_records], preds, "canonical", "labels_alone", names))
    if "canonical" in preds:
        # asking every type and keeping the absent ones (what a client filtering the full answer gets): the
        # canonical replies filtered to the types absent from each record
        with_absent = [r for r in records if set(names) - {e["type"] for e in r["entities"]}]
        clean = sum(
            1 for r in with_absent if not {e["type"] for e in preds["canonical"][r["id"]]["entities"]} - {e["type"] for e in r["entities"]}
        )
        out["empty_on_absent_types_full_query"] = round(clean / len(with_absent), 4) if with_absent else None
    if "absent" in preds:
        answers = preds["absent"]
        empty = sum(1 for p in answers.values() if p["status"] == "ok" and not p["entities"] and p.get("content") == EMPTY)
        empty_raw = sum(1 for p in answers.values() if p["status"] == "ok" and p.get("raw") == EMPTY)
        out.update(
            absent_type_records=len(answers),
            empty_on_absent_types=round(empty / len(answers), 4),
            empty_on_absent_types_as_written=round(empty_raw / len(answers), 4),
            empty_on_absent_types_ci95=wilson(empty, len(answers)),
        )
    return out


def wilson(k: int, n: int, z: float = 1.96) -> list[float]:
    """95% Wilson interval of a share k/n (sound near 0 and 1, where the normal one is not)."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(max(centre - half, 0.0), 4), round(min(centre + half, 1.0), 4)]


def one_type_drops(records: list[dict], preds: dict[str, dict[str, dict]], full: str, key: str, names: Sequence[str]) -> dict:
    """Per type: its F1 under the ``full`` query minus its F1 asked alone (``<key>:<type>`` predictions), the
    type's gold mentions, and the largest drop over all types and over those with MIN_SUBSET_SUPPORT mentions."""
    full_types = score(records, {r["id"]: preds[full][r["id"]] for r in records}, bootstrap=0)["seqeval"]["per_type"]
    drops, support = {}, {}
    for lab in names:
        one_type = score(records, preds.get(f"{key}:{lab}", {}), bootstrap=0)["seqeval"]["per_type"]
        if lab in full_types and full_types[lab].get("support", 0):
            drops[lab] = round(full_types[lab]["f1"] - one_type.get(lab, {}).get("f1", 0.0), 4)
            support[lab] = full_types[lab]["support"]
    # a type's F1 over a handful of gold mentions moves by 0.2 with one mention: the max over the types with
    # MIN_SUBSET_SUPPORT mentions is reported beside the max over all of them, never instead of it
    supported = [d for lab, d in drops.items() if support[lab] >= MIN_SUBSET_SUPPORT]
    ci = drop_intervals(records, preds[full], {lab: preds.get(f"{key}:{lab}", {}) for lab in drops}, list(drops))
    return {
        f"{key}_f1_drop_per_type": drops,
        f"{key}_support_per_type": support,
        f"{key}_f1_max_drop": max(drops.values()) if drops else None,
        f"{key}_f1_max_drop_supported": max(supported) if supported else None,
        f"{key}_f1_drop_ci95_per_type": ci,
        # the types whose drop exceeds the target beyond the records' noise (the interval's low end above it)
        f"{key}_over_target": sorted(lab for lab, (low, _) in ci.items() if low > SUBSET_TARGET),
    }


def drop_intervals(
    records: list[dict], full: dict[str, dict], alone: dict[str, dict[str, dict]], names: list[str], n: int = BOOTSTRAP, seed: int = 0
) -> dict[str, list[float]]:
    """Per type, the 95% paired bootstrap interval over records of (F1 under the full query - F1 asked alone):
    both answers of a record are drawn together, so the interval is that of the difference, not of either F1."""
    if not names or not records:
        return {}
    counts_full = strict_counts(records, full, names)
    draws = np.random.default_rng(seed).integers(0, len(records), size=(n, len(records)))
    out = {}
    for i, lab in enumerate(names):
        counts_alone = strict_counts(records, alone.get(lab, {}), names)[:, i]
        diff = f1_from_counts(counts_full[draws, i].sum(axis=1)) - f1_from_counts(counts_alone[draws].sum(axis=1))
        out[lab] = [round(float(np.percentile(diff, 2.5)), 4), round(float(np.percentile(diff, 97.5)), 4)]
    return out


def full_split(url: str, corpus: str, out: Path, log: Path) -> dict:
    """The canonical prompt on the corpus's whole test split: `medner eval run` through the served model (the
    default decoding, every trained type, 95% bootstrap interval); started over each time: the folder holds the
    last measured adapter's predictions, which eval's resume rightly refuses to mix with another's."""
    medner(
        "eval", "run", "--config", str(ROOT / "eval/configs/default.yaml"), f"corpus={corpus}", "split=test",
        f"url={url}", "served_model=ner", "concurrency=32", f"out={out}", "resume=false", log=log,
    )  # fmt: skip
    r = report(out)
    f = r["failures"]
    return {
        "f1_canonical_full_split": round(r["seqeval"]["micro"]["f1"], 4),
        "f1_canonical_full_split_ci95": [round(x, 4) for x in r["seqeval"]["micro"]["f1_ci95"] or []],
        "full_split_records": r["records"],
        "full_split_unparsed": f["invalid_json"]["count"] + f["schema_violation"]["count"] + f["truncated"]["count"],
    }


def curve_point(result: dict) -> dict | None:
    """One point of the learning curve from a chat result: its full-split F1 per corpus; None without one."""
    m = result.get("metrics", {})
    f1 = {c: m[c]["f1_canonical_full_split"] for c in TARGETS if "f1_canonical_full_split" in (m.get(c) or {})}
    if not f1 or not m.get("train_examples"):
        return None
    return {
        "train_examples": m["train_examples"],
        "train_wall_s": round(m["train_wall_s"]),
        "f1_full_split": f1,
        "full_split_records": {c: m[c].get("full_split_records") for c in f1},
        "adapter_sha256": result.get("adapter_sha256"),
        "date": result.get("date", "")[:10],
    }


def extend_curve(previous: dict | None, current: dict) -> list[dict]:
    """The curve so far (the replaced result's, with that result's own point) and the current point, by examples."""
    points = list((previous or {}).get("learning_curve", []))
    if previous and (p := curve_point(previous)):
        points.append(p)
    if c := curve_point(current):
        points.append(c)
    by_weights = {p["adapter_sha256"] or p["date"]: p for p in points}  # a rerun of the same weights replaces its point
    return sorted(by_weights.values(), key=lambda p: p["train_examples"])


def projection(curve: list[dict], budget_s: float = BUDGET_S, last: int = 3) -> dict:
    """Per corpus: F1 gained per doubling of the examples (least squares over the last ``last`` points), the F1 that
    rate gives from the last point at the budget (examples extended at the last run's seconds per example), and the
    examples and cumulative hours it would take to reach the target (None when the curve is flat or falling)."""
    pts = curve[-last:]
    if len(pts) < 2:
        return {}
    a, b = pts[-2], pts[-1]
    s_per_example = (b["train_wall_s"] - a["train_wall_s"]) / max(b["train_examples"] - a["train_examples"], 1)
    at_budget = b["train_examples"] + max(budget_s - b["train_wall_s"], 0) / s_per_example if s_per_example > 0 else b["train_examples"]
    out: dict = {"budget_s": budget_s, "s_per_example": round(s_per_example, 3), "examples_at_budget": round(at_budget)}
    for corpus, target in TARGETS.items():
        xy = [(math.log2(p["train_examples"]), p["f1_full_split"][corpus]) for p in pts if corpus in p["f1_full_split"]]
        if len(xy) < 2:
            continue
        mx, my = sum(x for x, _ in xy) / len(xy), sum(y for _, y in xy) / len(xy)
        var = sum((x - mx) ** 2 for x, _ in xy)
        slope = sum((x - mx) * (y - my) for x, y in xy) / var if var else 0.0
        best = max(p["f1_full_split"].get(corpus, 0.0) for p in curve)
        f1_budget = xy[-1][1] + slope * (math.log2(at_budget) - xy[-1][0])
        need, hours = None, None
        if xy[-1][1] >= target:
            need = b["train_examples"]
        elif slope > 0:
            need = round(2 ** (xy[-1][0] + (target - xy[-1][1]) / slope))
        if need is not None:
            hours = round((b["train_wall_s"] + (need - b["train_examples"]) * s_per_example) / 3600, 1)
        out[corpus] = {
            "target": target,
            "best": best,
            "f1_per_doubling": round(slope, 4),
            "f1_at_budget": round(f1_budget, 4),
            "examples_for_target": need,
            "hours_for_target": hours,
        }
    return out


def rescore(name: str) -> Path:
    """``bench/results/<name>.json``'s metrics recomputed from the predictions its run saved (no model): a new
    figure of this file on the same answers. Refused when a figure the file holds comes out different: the saved
    predictions are then another run's."""
    path = ROOT / "bench" / "results" / f"{name}.json"
    res = json.loads(path.read_text())
    for corpus_name, m in res["metrics"].items():
        if not isinstance(m, dict) or "subset_records" not in m:
            continue
        corpus = get_corpus(corpus_name)
        records = convert(corpus, "test")[: m["test_records"]]
        new = corpus_metrics(
            records, corpus, load_predictions(ROOT / "runs" / "bench" / name / corpus_name), ALL_VARIANTS, m["subset_records"]
        )
        if differ := [k for k, v in new.items() if isinstance(v, float) and isinstance(m.get(k), float) and abs(v - m[k]) > 1e-4]:
            raise SystemExit(f"{path}: {corpus_name}'s saved predictions give other figures ({', '.join(differ)}): another run's")
        m.update(new)
    res["rescored"] = {"date": time.strftime("%Y-%m-%d"), "git_commit": git_commit()}
    path.write_text(json.dumps(res, indent=2, ensure_ascii=False) + "\n")
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="the base model folder (medner pull prints it)")
    ap.add_argument("--adapter")
    ap.add_argument("--corpora", default="ncbi-disease,bc5cdr,cmedqaner")
    ap.add_argument("--limit", type=int, default=200, help="first N test records of each corpus")
    ap.add_argument("--subset-records", type=int, default=50, help="records asked one type at a time")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--name", default="chat")
    ap.add_argument("--full-split", action="store_true", help="also the canonical prompt on each whole test split (medner eval run)")
    ap.add_argument("--variants", default=",".join(ALL_VARIANTS), help="comma-separated, of: " + ", ".join(ALL_VARIANTS))
    ap.add_argument("--url", help="a running `medner serve` of this adapter (default: start one)")
    ap.add_argument("--rescore", action="store_true", help="recompute the result's metrics from its saved predictions (no model)")
    a = ap.parse_args()
    if a.rescore:
        print(rescore(a.name))
        return 0
    if not a.model or not a.adapter:
        ap.error("--model and --adapter are required (unless --rescore)")
    variants = a.variants.split(",")
    if unknown := [v for v in variants if v not in ALL_VARIANTS]:
        ap.error(f"unknown variant(s) {', '.join(unknown)}; of: {', '.join(ALL_VARIANTS)}")
    adapter = Path(a.adapter)
    rec = json.loads((adapter / "medner_run.json").read_text())
    trained = prior_training(adapter)  # its training, with that of an adapter it continued (init_adapter)
    metrics: dict = {}
    log = ROOT / "runs" / "bench" / f"{a.name}-serve.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    first = a.corpora.split(",")[0]
    known = trained_types(rec)["labels"]  # what the chat endpoint decodes with for this model
    with contextlib.ExitStack() as stack:
        url = a.url or stack.enter_context(server(a.model, str(adapter), first, log))
        for name in a.corpora.split(","):
            corpus = get_corpus(name)
            records = convert(corpus, "test")[: a.limit]
            metrics[name] = asyncio.run(
                run_corpus(url, corpus, records, a.subset_records, a.concurrency, 8192, known, variants, save=log.parent / a.name / name)
            )
            print(name, json.dumps(metrics[name]), flush=True)
            if a.full_split:
                metrics[name].update(full_split(url, name, log.parent / a.name / name / "full-split", log))
    # the full-split figures (--full-split, `medner eval run` through the same server): kept across reruns of
    # the same weights only, never carried over to another adapter
    weights = hashlib.sha256((adapter / "adapter_model.safetensors").read_bytes()).hexdigest()
    previous = ROOT / "bench" / "results" / f"{a.name}.json"
    if previous.is_file() and json.loads(previous.read_text()).get("adapter_sha256") == weights:
        old = json.loads(previous.read_text()).get("metrics", {})
        for name in metrics:
            for k, v in (old.get(name) or {}).items():
                if k.startswith(("f1_canonical_full_split", "full_split_")):
                    metrics[name].setdefault(k, v)
    metrics["train_wall_s"] = trained["train_wall_s_total"]
    metrics["train_examples"] = trained["examples_seen_total"] or rec.get("training", {}).get("train_examples")
    curve = extend_curve(
        json.loads(previous.read_text()) if previous.is_file() else None,
        {"metrics": metrics, "adapter_sha256": weights, "date": time.strftime("%Y-%m-%d")},
    )
    write_result(
        a.name,
        metrics,
        command=f"python -m bench.chat --model BASE --adapter {a.adapter} --limit {a.limit} --subset-records {a.subset_records}"
        + (f" --variants {a.variants}" if variants != list(ALL_VARIANTS) else "")
        + (" --full-split" if a.full_split else "")
        + (f" --name {a.name}" if a.name != "chat" else ""),
        notes=f"adapter {adapter} (instructions {json.dumps(rec.get('instructions'))}); first {a.limit} test records per corpus; "
        "held-out phrasings are never trained (prompts/templates/chat-v1/instructions.yaml, part heldout)",
        extra={"adapter_sha256": weights, "learning_curve": curve, "projection": projection(curve)},
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
