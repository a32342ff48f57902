"""The learning-curve benchmark's bookkeeping: which snapshots make the curve, in which order, and its plot."""

import json

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
