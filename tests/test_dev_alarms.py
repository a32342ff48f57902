"""Alarms of the SFT dev evaluation (sft/dev_eval.py): the signals that flag a failed run in the log and summary.json."""

from types import SimpleNamespace

from medner.sft.dev_eval import DevEvalCallback, _all_empty


def _rec(i, n_mentions):
    return {"id": f"c:{i}", "entities": [{"text": "x", "type": "T"}] * n_mentions}


def _pred(i, n_mentions, status="ok"):
    return {"id": f"c:{i}", "status": status, "entities": [{"text": "x", "type": "T"}] * n_mentions, "dropped": []}


def test_all_empty_needs_gold_mentions_and_parsed_empty_replies():
    recs = [_rec(0, 1), _rec(1, 0)]
    assert _all_empty(recs, {"c:0": _pred(0, 0), "c:1": _pred(1, 0)})
    assert not _all_empty(recs, {"c:0": _pred(0, 1), "c:1": _pred(1, 0)})
    assert not _all_empty(recs, {"c:0": _pred(0, 0, status="unparsed"), "c:1": _pred(1, 0)})  # its own alarm
    assert not _all_empty([_rec(0, 0)], {"c:0": _pred(0, 0)})  # nothing to find: empty is right


def _callback(tmp_path):
    cfg = SimpleNamespace(dev_grounded=None, dev_constrained=True)
    return DevEvalCallback({}, None, {}, tmp_path, cfg)


def test_a_mixture_failing_on_one_corpus_is_flagged(tmp_path):
    """The NCBI-disease + cMedQANER adapter that answered {"entities":[]} to every NCBI-disease sentence while
    cMedQANER kept the overall dev F1 above zero: the overall alarm alone stayed silent."""
    cb = _callback(tmp_path)
    row = {"step": 125, "dev_parse_rate": 1.0, "dev_f1": 0.31, "dev_all_empty": False, "dev_all_empty_corpora": ["ncbi-disease"]}
    (alarm,) = cb._check(row)
    assert "ncbi-disease" in alarm and "empty" in alarm
    assert cb._check({**row, "dev_all_empty_corpora": []}) == []


def test_overall_alarms(tmp_path):
    cb = _callback(tmp_path)
    assert "every dev reply is empty" in cb._check({"step": 3, "dev_parse_rate": 1.0, "dev_f1": 0.0, "dev_all_empty": True})[0]
    assert "parse" in cb._check({"step": 3, "dev_parse_rate": 0.2, "dev_f1": 0.0})[0]
    cb.best_f1 = 0.6
    assert "collapsed" in cb._check({"step": 9, "dev_parse_rate": 1.0, "dev_f1": 0.1})[0]
