"""Every shipped config loads (no unknown keys, right types) and names its launch command at the top."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _settings(stage: str, name: str = ""):
    if stage == "sft" and name.startswith("tokcls"):
        from medner.sft.tokcls import TokClsSettings

        return TokClsSettings
    if stage == "sft":
        from medner.sft.train import SFTSettings

        return SFTSettings
    if stage == "serve":
        from medner.serve.launch import ServeSettings

        return ServeSettings
    from medner.eval.run import EvalSettings

    return EvalSettings


@pytest.mark.parametrize(
    "path",
    sorted(p for stage in ("sft", "serve", "eval") for p in (ROOT / stage / "configs").glob("*.yaml")),
    ids=lambda p: f"{p.parent.parent.name}/{p.name}",
)
def test_shipped_config_loads(path):
    from medner.config import load_config

    stage = path.parent.parent.name
    cfg = load_config(_settings(stage, path.name), path)
    head = path.read_text().splitlines()[:6]
    command = "tokcls" if path.name.startswith("tokcls") else stage
    assert head[0].startswith("#") and any(f"medner {command}" in l or f"make {command}" in l for l in head), path
    if stage in ("serve", "eval"):
        assert cfg.merge == "auto"  # the CPU rule: the adapter merged, one model per engine


@pytest.mark.parametrize("value,expected", [("auto", "auto"), ("true", True), ("false", False)])
def test_merge_override_keeps_booleans(value, expected):
    from medner.config import load_config
    from medner.serve.launch import ServeSettings

    assert load_config(ServeSettings, None, [f"merge={value}"]).merge == expected


def test_bad_merge_value_is_refused_in_one_line(tmp_path):
    from conftest import run_medner

    proc = run_medner("eval", "run", "--config", str(ROOT / "eval/configs/default.yaml"), "merge=sometimes", f"out={tmp_path}")
    assert proc.returncode == 1 and "merge must be auto, true or false" in proc.stderr


def test_bad_tokcls_decode_is_refused_in_one_line(tmp_path):
    from conftest import run_medner

    proc = run_medner(
        "eval", "run", "--config", str(ROOT / "eval/configs/default.yaml"), "backend=tokcls", "tokcls_decode=beam", f"out={tmp_path}"
    )
    assert proc.returncode == 1 and "tokcls_decode must be argmax, viterbi or null" in proc.stderr
    assert not (tmp_path / "predictions.jsonl").exists()


@pytest.mark.parametrize("path", sorted((ROOT / "sft/configs/accelerate").glob("*.yaml")), ids=lambda p: p.name)
def test_accelerate_configs_name_their_launch_command(path):
    import yaml

    cfg = yaml.safe_load(path.read_text())
    head = path.read_text().splitlines()[:4]
    assert any("accelerate launch --config_file sft/configs/accelerate/" + path.name in l and "-m medner.cli sft train" in l for l in head)
    assert cfg["num_processes"] >= 2 and cfg["distributed_type"] in ("MULTI_GPU", "DEEPSPEED")
    if cfg["distributed_type"] == "DEEPSPEED":
        assert cfg["deepspeed_config"]["zero_stage"] in (2, 3)
