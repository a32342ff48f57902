"""The scorer's sanity properties (eval/score.py) and `medner eval score|compare`."""

import json
import re

import pytest
from conftest import run_medner

from medner.data.records import convert
from medner.eval.score import PredictionFileError, load_predictions, score

SPLITS = [(c, s) for c in ("ncbi-disease", "bc5cdr", "cmedqaner") for s in ("train", "dev", "test")]


def rec(rid, text, tokens_offsets, entities):
    toks = [text[s:e] for s, e in tokens_offsets]
    return {"id": rid, "text": text, "tokens": toks, "token_offsets": [list(o) for o in tokens_offsets], "entities": entities}


@pytest.mark.parametrize("corpus,split", SPLITS)
def test_gold_as_predictions_scores_exactly_one(registry, corpus, split):
    gold = convert(registry[corpus], split)
    r = score(gold, {g["id"]: g for g in gold}, bootstrap=0)
    m = r["seqeval"]["micro"]
    assert m["f1"] == m["precision"] == m["recall"] == 1.0
    assert all(v["f1"] == 1.0 for v in r["seqeval"]["per_type"].values())
    assert r["spans"]["exact"]["f1"] == 1.0
    assert sum(v["count"] for v in r["failures"].values()) == 0


# gold given as mention strings only, grounded by the data stage's rule: (tp, fp, fn) on the test splits.
# Misplaced repeats of short strings are the only loss (see test_ground.py).
PINNED_STRING_ONLY = {"ncbi-disease": (959, 1, 1), "bc5cdr": (9809, 0, 0), "cmedqaner": (1338, 2, 2)}


@pytest.mark.parametrize("corpus", sorted(PINNED_STRING_ONLY))
def test_gold_strings_only_scores_the_pinned_figure(registry, corpus):
    gold = convert(registry[corpus], "test")
    preds = {g["id"]: {"id": g["id"], "entities": [{"text": e["text"], "type": e["type"]} for e in g["entities"]]} for g in gold}
    r = score(gold, preds, bootstrap=0)
    tp, fp, fn = PINNED_STRING_ONLY[corpus]
    assert (r["spans"]["exact"]["tp"], r["spans"]["exact"]["fp"], r["spans"]["exact"]["fn"]) == (tp, fp, fn)
    assert r["seqeval"]["micro"]["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))


def test_empty_predictions_give_recall_zero(registry):
    gold = convert(registry["ncbi-disease"], "test")
    r = score(gold, {g["id"]: {"id": g["id"], "entities": []} for g in gold}, bootstrap=0)
    assert r["seqeval"]["micro"]["recall"] == 0.0 and r["seqeval"]["micro"]["f1"] == 0.0
    r2 = score(gold, {}, bootstrap=0)  # no prediction at all: same score, and reported as missing
    assert r2["seqeval"]["micro"]["recall"] == 0.0 and r2["failures"]["missing"]["count"] == 940


TEXT = "flu and cold and flu in adults with gout"
OFFS = [(0, 3), (4, 7), (8, 12), (13, 16), (17, 20), (21, 23), (24, 30), (31, 35), (36, 40)]
GOLD = [
    rec(
        "r1",
        TEXT,
        OFFS,
        [
            {"text": "flu", "type": "D", "start": 0, "end": 3},
            {"text": "cold", "type": "D", "start": 8, "end": 12},
            {"text": "flu", "type": "D", "start": 17, "end": 20},
            {"text": "adults", "type": "P", "start": 24, "end": 30},
            {"text": "gout", "type": "D", "start": 36, "end": 40},
        ],
    )
]


def test_hand_worked_example():
    # tp: flu@0 (D), gout (D); fp: cold as P (wrong type), "and cold" (wrong boundary); fn: cold, flu@17, adults
    pred = {
        "r1": {
            "id": "r1",
            "entities": [
                {"text": "flu", "type": "D", "start": 0, "end": 3},
                {"text": "cold", "type": "P", "start": 8, "end": 12},
                {"text": "gout", "type": "D", "start": 36, "end": 40},
                {"text": "and", "type": "D", "start": 13, "end": 16},
            ],
        }
    }
    r = score(GOLD, pred, bootstrap=0)
    m = r["seqeval"]["micro"]
    assert (m["precision"], m["recall"]) == (2 / 4, 2 / 5)
    assert m["f1"] == pytest.approx(2 * 0.5 * 0.4 / 0.9)
    assert r["seqeval"]["per_type"]["D"]["precision"] == 2 / 3 and r["seqeval"]["per_type"]["D"]["recall"] == 2 / 4
    assert r["seqeval"]["per_type"]["P"]["precision"] == 0.0 and r["seqeval"]["per_type"]["P"]["support"] == 1


def test_duplicated_gold_mention_predicted_once_is_one_tp_one_fn():
    pred = {"r1": {"id": "r1", "entities": [{"text": "flu", "type": "D"}]}}  # string only: grounded to flu@0
    r = score(GOLD, pred, bootstrap=0)
    d = r["spans"]["exact"]
    assert (d["tp"], d["fp"], d["fn"]) == (1, 0, 4)
    assert r["seqeval"]["per_type"]["D"]["recall"] == 1 / 4
    fn = {(x["mention"], x["type"]): x["count"] for x in r["false_negatives"]}
    assert fn[("flu", "D")] == 1


def test_partial_matches_and_overlaps_counted():
    pred = {
        "r1": {
            "id": "r1",
            "entities": [
                {"text": "flu and cold", "type": "D", "start": 0, "end": 12},  # overlaps flu and cold: one partial
                {"text": "cold", "type": "D", "start": 8, "end": 12},  # BIO cannot hold both: resolved
            ],
        }
    }
    r = score(GOLD, pred, bootstrap=0)
    assert r["overlapping_predictions_resolved"] == 1
    assert r["spans"]["exact"]["tp"] == 1 and r["spans"]["partial"]["tp"] == 2


def test_mentions_of_other_types_left_out_are_counted_not_scored():
    # a model of several corpora: its chemical on a disease corpus is left out of the prediction and counted
    pred = {"r1": {"id": "r1", "entities": [{"text": "flu", "type": "D", "start": 0, "end": 3}], "other_types": 2}}
    r = score(GOLD, pred, bootstrap=0)
    assert r["other_types_left_out"] == 2 and r["spans"]["exact"]["fp"] == 0
    assert score(GOLD, {}, bootstrap=0)["other_types_left_out"] == 0


def test_failures_are_counted_and_never_silent():
    gold = GOLD + [rec(f"r{i}", "x", [(0, 1)], []) for i in (2, 3, 4)]
    preds = {
        "r1": {"id": "r1", "entities": [], "status": "truncated", "raw": '{"entities":[{"te'},
        "r2": {"id": "r2", "entities": [], "status": "invalid_json", "raw": "nope"},
        "r3": {"id": "r3", "entities": [{"text": "zzz", "type": "D"}]},
    }
    r = score(gold, preds, bootstrap=0)
    f = {k: v["count"] for k, v in r["failures"].items()}
    assert f["truncated"] == 1 and f["invalid_json"] == 1 and f["ungrounded"] == 1 and f["missing"] == 1


def test_bootstrap_interval_brackets_the_score(registry):
    gold = convert(registry["cmedqaner"], "test")
    preds = {g["id"]: {"id": g["id"], "entities": g["entities"][::2]} for g in gold}
    r = score(gold, preds, bootstrap=300)
    lo, hi = r["seqeval"]["micro"]["f1_ci95"]
    assert lo < r["seqeval"]["micro"]["f1"] < hi and hi - lo < 0.2


@pytest.mark.parametrize(
    "line,fragment",
    [
        ('{"id": "zzz", "entities": []}', "unknown id 'zzz'"),
        ("not json", "not valid JSON"),
        ('{"id": "r2", "entities": [{"text": 1}]}', "entities[0]"),
        ('{"entities": []}', "missing string field 'id'"),
    ],
)
def test_bad_prediction_lines_name_file_and_line(tmp_path, line, fragment):
    p = tmp_path / "p.jsonl"
    p.write_text('{"id": "r1", "entities": []}\n' + line + "\n")
    with pytest.raises((PredictionFileError, ValueError), match=re.escape(fragment)) as e:
        load_predictions(p, {"r1", "r2"})
    assert f"{p}:2" in str(e.value)


def test_duplicate_prediction_id(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text('{"id": "r1", "entities": []}\n{"id": "r1", "entities": []}\n')
    with pytest.raises(PredictionFileError, match=r"p.jsonl:2: duplicate"):
        load_predictions(p, {"r1"})


def test_score_cli_reports_and_no_text(tmp_path):
    gold = tmp_path / "gold.jsonl"
    run_medner("data", "convert", "ncbi-disease", "--split", "dev", "--out", str(gold), check=True)
    recs = [json.loads(l) for l in gold.open()]
    pred = tmp_path / "pred.jsonl"
    pred.write_text("".join(json.dumps({"id": r["id"], "entities": r["entities"][1:]}) + "\n" for r in recs[:-5]))
    proc = run_medner("eval", "score", "--gold", str(gold), "--pred", str(pred), "--out", str(tmp_path / "rep"), check=True)
    assert "5 gold record(s) have no prediction" in proc.stdout
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert rep["failures"]["missing"]["count"] == 5 and 0 < rep["seqeval"]["micro"]["recall"] < 1
    assert rep["seqeval"]["per_type"]["Disease"]["support"] == 787
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "false negatives" in md and (tmp_path / "rep" / "per_type_f1.png").stat().st_size > 1000
    run_medner("eval", "score", "--gold", str(gold), "--pred", str(pred), "--out", str(tmp_path / "private"), "--no-text", check=True)
    private = (tmp_path / "private" / "report.md").read_text() + (tmp_path / "private" / "report.json").read_text()
    mentions = {e["text"] for r in recs for e in r["entities"] if len(e["text"]) > 6}
    assert not any(m in private for m in mentions)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "nope", "entities": []}\n')
    proc = run_medner("eval", "score", "--gold", str(gold), "--pred", str(bad), "--out", str(tmp_path / "x"))
    assert proc.returncode == 1 and f"{bad}:1: unknown id 'nope'" in proc.stderr
    cmp = run_medner("eval", "compare", str(tmp_path / "rep"), str(tmp_path / "private"), check=True)
    assert "| Disease |" in cmp.stdout and "+0.00" in cmp.stdout


def test_report_html_shows_errors_as_highlighted_sentences_and_no_text_hides_them(tmp_path):
    from medner.data.records import convert
    from medner.data.registry import get_corpus
    from medner.eval.report import write_report
    from medner.eval.score import score

    recs = [r for r in convert(get_corpus("ncbi-disease"), "test")[:30] if r["entities"]][:6]
    preds = {
        r["id"]: {"id": r["id"], "text": r["text"], "status": "ok", "entities": r["entities"][1:]} for r in recs
    }  # the first mention missed
    rep = score(recs, preds, bootstrap=0)
    write_report(rep, tmp_path / "a", records=recs, preds=preds)
    page = (tmp_path / "a" / "report.html").read_text()
    first = recs[0]["entities"][0]
    assert page.startswith("<!doctype html>") and f'id="{recs[0]["id"]}"' in page
    assert f'<mark class="fn" title="Disease [{first["start"]}, {first["end"]})">' in page and "per_type_f1.png" in page
    assert "http://" not in page and "https://" not in page
    write_report(rep, tmp_path / "b", with_text=False, records=recs, preds=preds)
    hidden = (tmp_path / "b" / "report.html").read_text()
    assert all(r["text"][:30] not in hidden for r in recs) and "no sentence" in hidden
