"""The chat benchmark's figures from saved answers: strict counts that add up to the scorer's, paired intervals for
a type asked alone, the Wilson interval of the empty-answer share, and a rescore that refuses another run's answers."""

import json

import pytest

import bench.chat as chat
from medner.data.records import convert
from medner.eval.score import f1_from_counts, score, strict_counts


def _perturbed(gold: list[dict], every: int, shift: bool = False) -> dict[str, dict]:
    """Predictions from the gold: every ``every``-th mention dropped, and (``shift``) every other one a character
    short, so that precision and recall both move."""
    preds = {}
    for r in gold:
        ents = []
        for i, e in enumerate(r["entities"]):
            if i % every == every - 1:
                continue
            if shift and i % 2 and e["end"] - e["start"] > 1:
                e = {**e, "end": e["end"] - 1, "text": r["text"][e["start"] : e["end"] - 1]}
            ents.append(e)
        preds[r["id"]] = {"id": r["id"], "entities": ents, "status": "ok"}
    return preds


def test_strict_counts_add_up_to_the_scorers_per_type_f1(registry):
    gold = convert(registry["cmedqaner"], "test")[:80]
    preds = _perturbed(gold, every=3, shift=True)
    names = registry["cmedqaner"].label_names
    counts = strict_counts(gold, preds, names).sum(axis=0)
    per_type = score(gold, preds, bootstrap=0)["seqeval"]["per_type"]
    checked = 0
    for i, lab in enumerate(names):
        if lab in per_type:
            assert f1_from_counts(counts[i]) == pytest.approx(per_type[lab]["f1"])
            assert counts[i][0] + counts[i][2] == per_type[lab]["support"]
            checked += 1
    assert checked >= 8


def test_a_type_asked_alone_gets_a_paired_interval(registry):
    gold = convert(registry["bc5cdr"], "test")[:60]
    full = {r["id"]: {"id": r["id"], "entities": r["entities"], "status": "ok"} for r in gold}
    same = chat.drop_intervals(gold, full, {"Chemical": full, "Disease": full}, ["Chemical", "Disease"])
    assert same == {"Chemical": [0.0, 0.0], "Disease": [0.0, 0.0]}  # the same answers: no difference to draw
    worse = _perturbed(gold, every=2)  # half the mentions missed when asked alone
    ci = chat.drop_intervals(gold, full, {"Chemical": worse, "Disease": full}, ["Chemical", "Disease"])
    point = 1.0 - score(gold, worse, bootstrap=0)["seqeval"]["per_type"]["Chemical"]["f1"]
    low, high = ci["Chemical"]
    assert 0.02 < low < point < high < 1.0
    assert ci["Disease"] == [0.0, 0.0]


def test_wilson_interval():
    assert chat.wilson(0, 10)[0] == 0.0 and chat.wilson(10, 10)[1] == 1.0
    low, high = chat.wilson(91, 100)
    assert low < 0.91 < high and high - low < 0.15
    assert chat.wilson(46 * 9, 46 * 10)[1] - chat.wilson(46 * 9, 46 * 10)[0] < high - low  # more records, narrower


def test_rescore_recomputes_and_refuses_another_runs_answers(tmp_path, monkeypatch, registry):
    corpus = registry["ncbi-disease"]
    gold = convert(corpus, "test")[:40]
    exact = {r["id"]: {"id": r["id"], "entities": r["entities"], "status": "ok", "content": "x", "raw": "x"} for r in gold}
    missed = _perturbed(gold, every=2)
    preds = {"canonical": exact, "heldout_en": exact, "subset:Disease": missed, "labels_alone:Disease": exact}
    folder = tmp_path / "runs" / "bench" / "chat" / "ncbi-disease"
    chat.save_predictions(folder, gold, preds)
    assert sorted(p.name for p in folder.iterdir()) == [
        "canonical.jsonl",
        "heldout_en.jsonl",
        "labels_alone-Disease.jsonl",
        "subset-Disease.jsonl",
    ]
    assert chat.load_predictions(folder).keys() == preds.keys()
    variants = ("canonical", "heldout_en", "subset", "labels_alone")
    metrics = chat.corpus_metrics(gold, corpus, chat.load_predictions(folder), variants, 40)
    assert metrics["subset_f1_drop_per_type"]["Disease"] > 0.02 and metrics["subset_over_target"] == ["Disease"]
    assert metrics["labels_alone_over_target"] == []
    results = tmp_path / "bench" / "results"
    results.mkdir(parents=True)
    recorded = {k: v for k, v in metrics.items() if not k.endswith(("_ci95_per_type", "_over_target"))}
    (results / "chat.json").write_text(json.dumps({"metrics": {"ncbi-disease": recorded}}))
    monkeypatch.setattr(chat, "ROOT", tmp_path)
    res = json.loads(chat.rescore("chat").read_text())
    assert res["metrics"]["ncbi-disease"]["subset_over_target"] == ["Disease"]
    assert "rescored" in res
    # the recorded file says otherwise than the saved answers: refused, the file left as it was
    recorded["f1_canonical"] = 0.5
    (results / "chat.json").write_text(json.dumps({"metrics": {"ncbi-disease": recorded}}))
    with pytest.raises(SystemExit, match="another run's"):
        chat.rescore("chat")
    assert json.loads((results / "chat.json").read_text())["metrics"]["ncbi-disease"]["f1_canonical"] == 0.5
