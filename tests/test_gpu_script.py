"""bench/gpu_accuracy.sh, the offline GPU run: its CPU-side parts (arguments, wheel list, a dry run)."""

import json
import os
import subprocess
import sys
from importlib import metadata

import pytest
from conftest import ROOT

SCRIPT = ROOT / "bench" / "gpu_accuracy.sh"


def run_script(*args: str, timeout: int = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.parametrize(
    "args,fragment",
    [
        ((), "bench/gpu_accuracy.sh prepare"),
        (("fly",), "unknown command 'fly' (prepare, run or dry-run)"),
        (("run",), "run needs --model PATH"),
        (("run", "--model", "/no/such/model"), "--model /no/such/model does not exist"),
        (("dry-run", "--frob"), "unknown argument '--frob'"),
    ],
)
def test_bad_arguments_are_one_clear_line(args, fragment):
    proc = run_script(*args)
    assert proc.returncode == 2 and fragment in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def test_run_refuses_a_machine_without_an_nvidia_gpu(tiny_model):
    import shutil

    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has nvidia-smi")
    proc = run_script("run", "--model", str(tiny_model))
    assert proc.returncode == 2 and "not an NVIDIA GPU machine" in proc.stderr


def test_wheel_list_pins_what_the_cpu_stack_runs():
    """The GPU run installs the versions pyproject pins (trl, bitsandbytes, datasets); every other wheel in the
    list is one this environment runs (its exact version is whatever the CPU stack resolved to when the list
    was written)."""
    import re

    lines = [l.split() for l in (ROOT / "bench/gpu/wheels.txt").read_text().splitlines() if l.strip() and not l.startswith("#")]
    assert lines and all(len(l) == 2 and "==" in l[0] for l in lines), lines
    pins = {req.split("==")[0]: req.split("==")[1] for req, _ in lines}
    for need in ("trl", "bitsandbytes", "datasets", "xgrammar", "seqeval", "gguf"):
        assert need in pins, need
    pyproject = dict(re.findall(r'"([A-Za-z0-9_.-]+)==([^"]+)"', (ROOT / "pyproject.toml").read_text()))
    for name, version in pins.items():
        if name in pyproject:
            assert version == pyproject[name], f"{name}: wheels.txt pins {version}, pyproject {pyproject[name]}"
        assert metadata.version(name), name  # installed here


@pytest.mark.slow
def test_dry_run_trains_evaluates_and_records(tmp_path):
    proc = run_script("dry-run", "--run-dir", str(tmp_path / "gpu"), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "gpu/results/ncbi-disease-gpu-accuracy.json").read_text())
    m = res["metrics"]
    assert m["test_records"] == 4 and m["gpu"] == "none (CPU dry run)" and m["train_steps"] == 2
    assert m["grounded"] == "ordered"  # the default decoding, recorded
    assert 0.0 <= m["f1"] <= 1.0 and m["train_wall_s"] > 0
    assert "DRY RUN" in res["notes"]
    # it ran this checkout's code, through the link folder, whatever medner is installed
    assert (tmp_path / "gpu/.medner-path/medner/sft").resolve() == ROOT / "sft"
    assert (
        not (ROOT / "bench/results/ncbi-disease-gpu-accuracy.json").exists()
        or "DRY RUN" not in (ROOT / "bench/results/ncbi-disease-gpu-accuracy.json").read_text()
    )
