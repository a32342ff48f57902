"""`medner data validate|convert` as a user runs them."""

import json

import pytest
from conftest import run_medner


@pytest.mark.parametrize(
    "name,content,line",
    [("orphan.tsv", "The\tO\nasthma\tI-Disease\n\n", 2), ("cols.tsv", "The\tO\tX\n\n", 1), ("empty.tsv", "", None)],
)
def test_validate_bad_files_exit_1_and_name_file_line(tmp_path, name, content, line):
    p = tmp_path / name
    p.write_text(content)
    proc = run_medner("data", "validate", str(p))
    assert proc.returncode == 1
    assert str(p) in proc.stderr
    if line:
        assert f"{p}:{line}:" in proc.stderr


def test_validate_unknown_label_with_corpus(tmp_path):
    p = tmp_path / "x.tsv"
    p.write_text("aspirin\tB-Chemical\n\n")
    proc = run_medner("data", "validate", "--corpus", "ncbi-disease", str(p))
    assert proc.returncode == 1 and f"{p}:1: unknown label 'Chemical'" in proc.stderr


def test_validate_good_file_and_scheme(tmp_path):
    p = tmp_path / "x.tsv"
    p.write_text("asthma\tS-Disease\n\n")
    assert run_medner("data", "validate", str(p)).returncode == 1  # S- is not IOB2
    assert run_medner("data", "validate", "--scheme", "bioes", str(p)).returncode == 0


def test_convert_writes_records_and_pairs_and_prints_no_text(tmp_path):
    out, pairs = tmp_path / "r.jsonl", tmp_path / "p.jsonl"
    proc = run_medner("data", "convert", "cmedqaner", "--split", "dev", "--out", str(out), "--pairs-out", str(pairs), check=True)
    recs = [json.loads(l) for l in out.open()]
    assert len(recs) == 175 and len([l for l in pairs.open()]) >= 175
    assert "175 records, 1024 mentions" in proc.stdout
    assert recs[0]["text"][:6] not in proc.stdout + proc.stderr  # counts only, no corpus text


def test_convert_unknown_corpus_is_one_clear_line(tmp_path):
    proc = run_medner("data", "convert", "nope", "--split", "test", "--out", str(tmp_path / "x.jsonl"))
    assert proc.returncode == 1 and proc.stderr.strip().startswith("error: unknown corpus 'nope'")
    assert "Traceback" not in proc.stderr
