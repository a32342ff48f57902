"""Annotation-tool formats (data/formats.py): import with exact offsets and placed problems, export, round trips."""

import json

import pytest
from conftest import run_medner

from medner.data.bio import BioError
from medner.data.formats import read_annotated, to_doccano, to_labelstudio, write_brat

EN = "Aspirin-induced asthma was seen in a patient with hypertension and asthma."
EN_SPANS = [(0, 7, "Chemical"), (16, 22, "Disease"), (50, 62, "Disease"), (67, 73, "Disease")]  # asthma twice
ZH = "患者服用阿莫西林后出现腹痛。"
ZH_SPANS = [(4, 8, "Chemical"), (11, 13, "Disease")]
LABELS = ["Chemical", "Disease"]


def _ents(recs):
    return [(r["text"][e["start"] : e["end"]], e["text"], e["type"]) for r in recs for e in r["entities"]]


def test_doccano_both_shapes_and_chinese(tmp_path):
    f, z = tmp_path / "a.jsonl", tmp_path / "z.jsonl"
    f.write_text(json.dumps({"text": EN, "label": [list(s) for s in EN_SPANS]}) + "\n\n")
    z.write_text(
        json.dumps({"text": ZH, "entities": [{"start_offset": a, "end_offset": b, "label": l} for a, b, l in ZH_SPANS]}, ensure_ascii=False)
        + "\n"
    )
    en = read_annotated(f, "doccano", "en", LABELS, "t")
    assert [e[1] for e in _ents(en)] == ["Aspirin", "asthma", "hypertension", "asthma"]
    assert all(a == b for a, b, _ in _ents(en))
    zh = read_annotated(z, "doccano", "zh", LABELS, "t")  # one token per character
    assert _ents(zh) == [("阿莫西林", "阿莫西林", "Chemical"), ("腹痛", "腹痛", "Disease")]
    with pytest.raises(BioError, match="does not fall on token boundaries"):  # the same text tokenized as English: one word
        read_annotated(z, "doccano", "en", LABELS, "t")


def test_off_boundary_unknown_label_and_bad_span_are_placed(tmp_path):
    f = tmp_path / "off.jsonl"
    f.write_text(
        json.dumps({"text": "x"})
        + "\n"
        + json.dumps({"text": "An asthmatic child.", "label": [[3, 9, "Disease"], [13, 18, "Gene"], [5, 99, "Disease"]]})
        + "\n"
    )
    with pytest.raises(BioError) as e:
        read_annotated(f, "doccano", "en", LABELS, "t")
    msgs = [str(p) for p in e.value.problems]
    assert msgs[0].startswith(f"{f}:2: annotation [3, 9) 'asthma' (Disease) does not fall on token boundaries") and "asthmatic" in msgs[0]
    assert msgs[1].startswith(f"{f}:2: unknown label 'Gene'") and msgs[2].startswith(f"{f}:2: annotation [5, 99, 'Disease']")


def test_labelstudio_tasks_are_placed_by_line(tmp_path):
    tasks = [
        {
            "id": 1,
            "data": {"text": EN},
            "annotations": [
                {
                    "result": [{"type": "labels", "value": {"start": a, "end": b, "labels": [l]}} for a, b, l in EN_SPANS]
                    + [{"type": "choices", "value": {}}]
                }
            ],
        },
        {
            "id": 2,
            "data": {"text": "An asthmatic child."},
            "annotations": [{"result": [{"type": "labels", "value": {"start": 3, "end": 9, "labels": ["Disease"]}}]}],
        },
    ]
    f = tmp_path / "ls.json"
    f.write_text(json.dumps(tasks, indent=1))
    with pytest.raises(BioError) as e:
        read_annotated(f, "labelstudio", "en", LABELS, "t")
    line = [i for i, l in enumerate(f.read_text().splitlines(), start=1) if l == " {"][1]  # the second task opens there
    assert str(e.value.problems[0]).startswith(f"{f}:{line}:")
    f.write_text(json.dumps(tasks[:1]))
    assert len(read_annotated(f, "labelstudio", "en", LABELS, "t")[0]["entities"]) == 4


def test_brat_with_a_discontinuous_entity(tmp_path, caplog):
    (tmp_path / "d1.txt").write_text(EN)
    (tmp_path / "d1.ann").write_text(
        "T1\tChemical 0 7\tAspirin\nT2\tDisease 16 22;67 73\tasthma asthma\nR1\tCause Arg1:T1 Arg2:T3\nT3\tDisease 50 62\thypertension\n"
    )
    recs = read_annotated(tmp_path, "brat", "en", LABELS, "b")
    assert [e["text"] for e in recs[0]["entities"]] == ["Aspirin", "hypertension"]
    assert "d1.ann:2: discontinuous entity skipped" in caplog.text


@pytest.mark.parametrize("fmt", ["labelstudio", "doccano", "brat"])
def test_round_trip_loses_nothing(tmp_path, fmt):
    from medner.data.records import convert
    from medner.data.registry import get_corpus

    for corpus in ("ncbi-disease", "cmedqaner"):
        c = get_corpus(corpus)
        recs = convert(c, "test")[:60]
        if fmt == "labelstudio":
            f = tmp_path / f"{corpus}.json"
            tasks = to_labelstudio(recs)
            for t in tasks:  # what a reviewer accepts becomes the annotation set
                t["annotations"] = [{"result": t.pop("predictions")[0]["result"]}]
            f.write_text(json.dumps(tasks, ensure_ascii=False))
        elif fmt == "doccano":
            f = tmp_path / f"{corpus}.jsonl"
            f.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in to_doccano(recs)))
        else:
            f = tmp_path / corpus
            write_brat(recs, f)
        back = read_annotated(f, fmt, c.lang, c.label_names, "rt")
        assert [r["text"] for r in back] == [r["text"] for r in recs]
        assert [[(e["start"], e["end"], e["type"]) for e in r["entities"]] for r in back] == [
            [(e["start"], e["end"], e["type"]) for e in r["entities"]] for r in recs
        ]


def test_registry_format_and_validate(tmp_path):
    f = tmp_path / "dc.jsonl"
    f.write_text(json.dumps({"text": EN, "label": [list(s) for s in EN_SPANS]}) + "\n")
    (tmp_path / "corpora.yaml").write_text(
        "mine:\n  lang: en\n  format: doccano\n  files: {test: dc.jsonl}\n  labels: {Chemical: {}, Disease: {}}\n"
        "bad:\n  lang: en\n  format: excel\n  files: {test: dc.jsonl}\n  labels: {Disease: {}}\n"
    )
    env = {"MEDNER_CORPORA": str(tmp_path / "corpora.yaml")}
    ok = run_medner("data", "validate", str(f), "--format", "doccano")
    assert ok.returncode == 0 and "ok (1 records, format doccano)" in ok.stdout
    proc = run_medner("data", "convert", "mine", "--split", "test", "--out", str(tmp_path / "o.jsonl"), env=env)
    assert proc.returncode == 1 and "format must be one of bio, labelstudio, doccano, brat, not 'excel'" in proc.stderr


def test_eval_export_writes_predictions_with_gold(tmp_path):
    from medner.data.records import convert
    from medner.data.registry import get_corpus

    run = tmp_path / "run"
    run.mkdir()
    recs = convert(get_corpus("ncbi-disease"), "test")[:5]
    (run / "predictions.jsonl").write_text(
        "".join(json.dumps({"id": r["id"], "text": r["text"], "entities": r["entities"][:1]}) + "\n" for r in recs)
    )
    (run / "config.resolved.yaml").write_text("corpus: ncbi-disease\nsplit: test\n")
    run_medner("eval", "export", str(run), "--format", "labelstudio", "--out", str(tmp_path / "ls.json"), check=True)
    tasks = json.loads((tmp_path / "ls.json").read_text())
    assert len(tasks) == 5 and tasks[0]["data"]["medner_id"] == recs[0]["id"]
    assert len(tasks[0]["annotations"][0]["result"]) == len(recs[0]["entities"])  # gold, the second annotation set
    assert len(tasks[0]["predictions"][0]["result"]) == min(1, len(recs[0]["entities"]))
