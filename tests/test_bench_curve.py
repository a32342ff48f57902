"""The learning-curve benchmark's bookkeeping: which snapshots make the curve, in which order, and its plot."""

import json

from bench.chat import extend_curve, projection
from bench.learning_curve import plot, snapshots


def _snap(folder, step, examples, wall):
    folder.mkdir(parents=True)
    (folder / "snapshot.json").write_text(json.dumps({"step": step, "examples": examples, "train_wall_s": wall}))


def test_snapshots_are_ordered_and_the_final_adapter_joins_once(tmp_path):
    _snap(tmp_path / "curve" / "step-63", 63, 504, 700.0)
    _snap(tmp_path / "curve" / "step-32", 32, 256, 350.0)
    (tmp_path / "curve" / "step-99").mkdir()  # cut short by a kill before its snapshot.json: not a point
    _snap(tmp_path / "adapter", 80, 640, 900.0)
    assert [p.name for p in snapshots(tmp_path)] == ["step-32", "step-63", "adapter"]
    # a final adapter at a step that already has a snapshot is not a second point
    _snap(tmp_path / "curve" / "step-80", 80, 640, 900.0)
    assert [p.name for p in snapshots(tmp_path)] == ["step-32", "step-63", "step-80"]


def test_curve_plot_is_written(tmp_path):
    rows = [
        {"examples": 256, "train_wall_s": 350.0, "dev_f1": 0.41, "dev_f1_ci95": [0.37, 0.45]},
        {"examples": 504, "train_wall_s": 700.0, "dev_f1": 0.55, "dev_f1_ci95": [0.51, 0.59]},
    ]
    out = tmp_path / "curve.png"
    plot(rows, "ncbi-disease", out, "title")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000


def test_accuracy_result_names_keep_variants_beside_the_main_result():
    import pytest

    from bench.accuracy import result_name

    assert result_name("ncbi-disease", False) == "ncbi-disease-accuracy"  # the name ../shared/checks/accuracy reads
    assert result_name("cmedqaner", True) == "cmedqaner-mixture-accuracy"
    assert result_name("cmedqaner", True, "shuffled-groups") == "cmedqaner-mixture-shuffled-groups-accuracy"
    with pytest.raises(SystemExit, match="--variant"):
        result_name("cmedqaner", True, "../x")


def test_accuracy_refuses_bad_runs_and_variants_before_any_work(tmp_path):
    import subprocess
    import sys

    from conftest import ROOT

    for args, fragment in (
        (["--runs", "plain,bogus"], "--runs: a comma-separated choice of plain, free, grounded"),
        (["--variant", "A B"], "--variant: lower-case letters"),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "bench.accuracy", "--model", "no-such-model", "--run-dir", str(tmp_path), *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 1 and fragment in proc.stderr, proc.stderr
        assert not any(tmp_path.iterdir())  # nothing started


def _chat_result(examples, wall, f1s, sha):
    metrics = {c: {"f1_canonical_full_split": f, "full_split_records": 100} for c, f in f1s.items()}
    return {"metrics": {**metrics, "train_examples": examples, "train_wall_s": wall}, "adapter_sha256": sha, "date": "2026-12-02"}


def test_chat_curve_carries_each_replaced_result_and_projects_to_the_budget():
    first = _chat_result(1000, 1000.0, {"ncbi-disease": 0.60, "bc5cdr": 0.70, "cmedqaner": 0.50}, "a")
    first["learning_curve"] = extend_curve(None, first)
    second = _chat_result(2000, 2000.0, {"ncbi-disease": 0.70, "bc5cdr": 0.70, "cmedqaner": 0.70}, "b")
    second["learning_curve"] = extend_curve(first, second)
    assert [p["train_examples"] for p in second["learning_curve"]] == [1000, 2000]
    # a rerun of the same weights replaces its point rather than adding one; a bench without the full split adds none
    rerun = _chat_result(2000, 2000.0, {"ncbi-disease": 0.71, "bc5cdr": 0.70, "cmedqaner": 0.70}, "b")
    assert [p["f1_full_split"]["ncbi-disease"] for p in extend_curve(second, rerun)] == [0.60, 0.71]
    assert len(extend_curve(second, {"metrics": {"train_examples": 3000, "train_wall_s": 3000.0}, "adapter_sha256": "c"})) == 2

    proj = projection(second["learning_curve"], budget_s=8000.0)
    assert proj["s_per_example"] == 1.0 and proj["examples_at_budget"] == 8000  # 6,000 s more at 1 s an example
    ncbi = proj["ncbi-disease"]  # 0.10 a doubling: two more doublings reach 0.90
    assert ncbi["f1_per_doubling"] == 0.1 and ncbi["f1_at_budget"] == 0.9
    assert ncbi["examples_for_target"] == 4000 and ncbi["hours_for_target"] == round(4000 / 3600, 1)
    assert proj["bc5cdr"]["examples_for_target"] is None  # flat: no projection reaches 0.85
    assert proj["cmedqaner"]["examples_for_target"] == 2000 and proj["cmedqaner"]["best"] == 0.70  # met already
