"""Past one process: data-parallel training with torchrun on CPU (gloo), the main process alone writing."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

TORCHRUN = Path(sys.executable).with_name("torchrun")


def _torchrun(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two processes on a 2-core machine
    return subprocess.run([str(TORCHRUN), "--nproc_per_node", "2", "-m", "medner.cli", *args], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.slow
@pytest.mark.parametrize("command,config", [("sft", "tiny.yaml"), ("tokcls", "tokcls-tiny.yaml")])
def test_two_processes_train_one_adapter_and_resume(command, config, tiny_model, tmp_path):
    out = tmp_path / "ddp"
    args = [command, "train", "--config", str(ROOT / "sft/configs" / config), f"model={tiny_model}", f"output_dir={out}", "quantization=none", "save_steps=2"]
    proc = _torchrun(*args, "max_steps=4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 4
    assert summary["examples_per_step"] == 2 * yaml.safe_load((out / "config.resolved.yaml").read_text())["batch_size"]
    assert (out / "adapter" / "adapter_model.safetensors").is_file() and (out / "adapter" / "medner_run.json").is_file()
    assert proc.stderr.count("adapter written to") == 1  # the main process alone writes the adapter and the summary
    assert "data-parallel: 2 processes" in proc.stderr
    # both processes killed after the run: the same command with more steps resumes from the last checkpoint
    again = _torchrun(*args, "max_steps=6")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from checkpoint-4" in again.stderr
    assert json.loads((out / "summary.json").read_text())["steps"] == 6
