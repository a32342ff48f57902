"""`medner sft`: the tiny QLoRA run, its outputs, resume after SIGKILL, and config errors."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, run_medner
from safetensors.torch import load_file

from medner.machine import describe as describe_machine

pytestmark = pytest.mark.slow


def test_tiny_run_writes_a_trained_adapter(tiny_run, tiny_model):
    ad = tiny_run / "adapter"
    for f in (
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer_config.json",
        "medner_run.json",
        "config.resolved.yaml",
        "data_manifest.json",
    ):
        assert (ad / f).is_file(), f
    for f in ("loss_curve.json", "loss_curve.png", "summary.json", "config.resolved.yaml"):
        assert (tiny_run / f).is_file(), f
    w = load_file(ad / "adapter_model.safetensors")
    lora_b = [v for k, v in w.items() if "lora_B" in k]
    assert lora_b and all(float(v.abs().sum()) > 0 for v in lora_b)  # LoRA B starts at zero: every one moved
    curve = json.loads((tiny_run / "loss_curve.json").read_text())["train"]
    assert len(curve) >= 4
    first, last = sum(r["loss"] for r in curve[:2]) / 2, sum(r["loss"] for r in curve[-2:]) / 2
    assert last < first, curve
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert summary["steps"] == 8 and summary["dev"] and "QLoRA" in summary["mode"]
    assert summary["machine"] == describe_machine() and "cores" in summary["machine"]
    rec = json.loads((ad / "medner_run.json").read_text())
    assert rec["prompt_version"] == "compact-v1" and rec["corpora"]["ncbi-disease"]["labels"] == ["Disease"]
    assert len(rec["base_model"]["weights_sha256"]) == 64
    manifest = json.loads((ad / "data_manifest.json").read_text())
    assert manifest["train_examples"] == 256 and {f["split"] for f in manifest["files"]} == {"train", "dev"}


def test_adapter_loads_in_transformers_and_generates(tiny_run, tiny_model):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.bfloat16)
    model = PeftModel.from_pretrained(model, tiny_run / "adapter")
    tok = AutoTokenizer.from_pretrained(tiny_run / "adapter")
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "asthma"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 4 or out.shape[1] > ids["input_ids"].shape[1]


def test_resume_after_sigkill_continues_the_step_counter(tiny_model, tmp_path):
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "medner.cli",
        "sft",
        "train",
        "--config",
        str(ROOT / "sft/configs/tiny.yaml"),
        f"model={tiny_model}",
        f"output_dir={out}",
        "max_steps=8",
        "save_steps=2",
        "dev_examples=2",
        "curve_examples=[8,24]",
        "group_by_length=true",
    ]  # the shuffled length-grouped order must resume where it stopped too
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 400
    try:
        while time.time() < deadline and not (out / "checkpoint-4" / "trainer_state.json").is_file():
            time.sleep(0.5)
        assert (out / "checkpoint-4" / "trainer_state.json").is_file(), "no checkpoint-4 in time"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (out / "adapter").exists()
    (out / "checkpoint-99").mkdir()  # a checkpoint cut short by the kill: no trainer state; must be skipped
    (out / "checkpoint-99" / "adapter_model.safetensors").write_bytes(b"")
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "resuming from checkpoint-" in second.stderr
    assert "resuming from checkpoint-99" not in second.stderr
    state = json.loads(sorted(out.glob("checkpoint-8"))[0].joinpath("trainer_state.json").read_text())
    assert state["global_step"] == 8
    logged = [h["step"] for h in state["log_history"] if "loss" in h]
    assert logged[0] <= 4 and logged[-1] == 8  # the history carried over: the run was continued, not restarted
    # the training clock adds up both segments: the time recorded at the resumed checkpoint + this segment's steps
    resumed_at = int(re.search(r"resuming from checkpoint-(\d+)", second.stderr).group(1))
    # the final checkpoint carries the whole history: the clock at the resumed step is the first segment's
    before = [h["train_wall_s"] for h in state["log_history"] if "train_wall_s" in h and h["step"] == resumed_at][-1]
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["step_wall_s"]) == 8 - resumed_at
    assert summary["train_wall_s"] == pytest.approx(before + sum(summary["step_wall_s"]), abs=0.05)
    assert summary["train_wall_s"] > summary["segment_wall_s"] - summary["dev_eval_s"] - 60 and before > 0
    # learning-curve snapshots at 8 and 24 examples (batch 4: steps 2 and 6), one in each segment, and the final adapter
    snaps = {p.parent.name: json.loads(p.read_text()) for p in out.glob("curve/*/snapshot.json")}
    assert sorted(snaps) == ["step-2", "step-6"] and snaps["step-6"]["examples"] == 24
    assert snaps["step-2"]["train_wall_s"] < snaps["step-6"]["train_wall_s"] <= summary["train_wall_s"]
    assert (out / "curve/step-6/adapter_model.safetensors").is_file() and (out / "curve/step-6/medner_run.json").is_file()
    assert json.loads((out / "adapter/snapshot.json").read_text())["step"] == 8


@pytest.mark.parametrize(
    "override,fragment",
    [
        ("lora_rr=4", "unknown key(s) 'lora_rr' (did you mean 'lora_r'?)"),
        ("model=Qwen/Qwen2.5-0.5B-Instruct", "pass model=PATH"),
        ("corpora=[no-such-corpus]", "unknown corpus"),
    ],
)
def test_bad_config_is_one_clear_line(tmp_path, override, fragment):
    proc = run_medner(
        "sft", "train", "--config", str(ROOT / "sft/configs/tiny.yaml"), f"output_dir={tmp_path}", override, env={"HF_HUB_OFFLINE": "1"}
    )
    assert proc.returncode == 1
    err = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert len(err) == 1 and fragment in err[0], proc.stderr[-1500:]
    assert "Traceback" not in proc.stderr


def test_missing_data_file_is_one_clear_line(tmp_path, tiny_model):
    reg = tmp_path / "corpora.yaml"
    reg.write_text("gone:\n  lang: en\n  files: {train: missing.tsv, dev: missing.tsv}\n  labels: {Disease: {}}\n")
    proc = run_medner(
        "sft",
        "train",
        "--config",
        str(ROOT / "sft/configs/tiny.yaml"),
        f"model={tiny_model}",
        f"output_dir={tmp_path}/o",
        "corpora=[gone]",
        env={"MEDNER_CORPORA": str(reg)},
    )
    assert proc.returncode == 1 and "data file missing" in proc.stderr and "missing.tsv" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_config_module_unknown_keys_and_types(tmp_path):
    from medner.config import ConfigError, load_config
    from medner.sft.train import SFTSettings

    cfg = load_config(
        SFTSettings, ROOT / "sft/configs/tiny.yaml", ["max_steps=3", "corpora=ncbi-disease,cmedqaner", "max_train_examples=null"]
    )
    assert cfg.max_steps == 3 and cfg.corpora == ["ncbi-disease", "cmedqaner"] and cfg.max_train_examples is None
    with pytest.raises(ConfigError, match="must be an integer"):
        load_config(SFTSettings, ROOT / "sft/configs/tiny.yaml", ["max_steps=lots"])
    with pytest.raises(ConfigError, match="not key=value"):
        load_config(SFTSettings, None, ["max_steps"])


def test_every_config_knob_is_commented_and_known():
    import dataclasses

    from medner.sft.tokcls import TokClsSettings
    from medner.sft.train import SFTSettings

    for path in (ROOT / "sft/configs").glob("*.yaml"):
        tokcls = path.name.startswith("tokcls")
        names = {f.name for f in dataclasses.fields(TokClsSettings if tokcls else SFTSettings)}
        command = "medner tokcls train" if tokcls else "medner sft train"
        lines = path.read_text().splitlines()
        assert lines[0].startswith("#") and any(command in l or "make sft" in l for l in lines[:6]), path
        keys = [l.split(":")[0] for l in lines if l and not l.startswith("#") and not l.startswith(" ")]
        assert set(keys) <= names, (path, set(keys) - names)


def test_merge_writes_a_plain_model_equal_to_base_plus_adapter(tiny_run, tiny_model, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "merged"
    run_medner("sft", "merge", "--adapter", str(tiny_run / "adapter"), "--out", str(out), check=True)
    assert (out / "config.json").is_file() and (out / "medner_run.json").is_file()
    ids = torch.tensor([[9707, 11, 1879, 0, 1]])
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32), tiny_run / "adapter")
    with torch.no_grad():
        a, b = merged(ids).logits, peft(ids).logits
    assert torch.allclose(a, b, atol=5e-2), (a - b).abs().max()


def test_run_record_refuses_other_prompt_version(tiny_run, tmp_path):
    import shutil

    from medner.inference.runrecord import RunRecordError, check_adapter

    ad = tmp_path / "adapter"
    shutil.copytree(tiny_run / "adapter", ad)
    rec = json.loads((ad / "medner_run.json").read_text())
    check_adapter(ad)  # as trained: accepted
    rec["prompt_version"] = "v0"
    (ad / "medner_run.json").write_text(json.dumps(rec))
    with pytest.raises(RunRecordError, match="prompt version 'v0'"):
        check_adapter(ad)
    (ad / "medner_run.json").unlink()
    with pytest.raises(RunRecordError, match="no medner_run.json"):
        check_adapter(ad)


def test_a_model_is_queried_with_its_trained_prompt_version(tiny_run, tmp_path):
    import shutil

    from medner.inference.runrecord import RunRecordError, check_adapter, prompt_version_for
    from medner.prompts.render import template_hash

    ad = tmp_path / "adapter"
    shutil.copytree(tiny_run / "adapter", ad)
    rec = json.loads((ad / "medner_run.json").read_text())
    rec.update(prompt_version="compact-v1", prompt_template_sha256=template_hash("compact-v1"))
    (ad / "medner_run.json").write_text(json.dumps(rec))
    assert check_adapter(ad)["prompt_version"] == "compact-v1"
    assert prompt_version_for(None, rec, "x") == "compact-v1"  # unset: the trained one
    assert prompt_version_for("compact-v1", rec, "x") == "compact-v1"
    with pytest.raises(RunRecordError, match="trained with prompt version 'compact-v1', not 'v1'"):
        check_adapter(ad, prompt_version="v1")
    assert prompt_version_for(None, None, "base") == "v1"  # no record (zero-shot): the default
    assert prompt_version_for("compact-v1", None, "base") == "compact-v1"
    with pytest.raises(ValueError, match="unknown prompt version"):
        prompt_version_for("v9", None, "base")
    rec["prompt_template_sha256"] = "0" * 64  # the templates changed since training
    (ad / "medner_run.json").write_text(json.dumps(rec))
    with pytest.raises(RunRecordError, match="templates hash to"):
        check_adapter(ad)


def test_eval_refuses_another_prompt_version_in_one_line(tiny_run, tiny_model, tmp_path):
    proc = run_medner(
        "eval",
        "run",
        "--config",
        str(ROOT / "eval/configs/default.yaml"),
        "backend=hf",
        f"model={tiny_model}",
        f"adapter={tiny_run / 'adapter'}",
        "prompt_version=v1",
        "limit=2",
        f"out={tmp_path}",
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    err = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert len(err) == 1 and "trained with prompt version 'compact-v1', not 'v1'" in err[0], proc.stderr[-1500:]


def test_training_mix_caps_empty_answers_and_is_seeded():
    from medner.config import load_config
    from medner.sft.train import EMPTY_ANSWER, SFTSettings, build_datasets

    cfg = load_config(
        SFTSettings, ROOT / "sft/configs/tiny.yaml", ["max_train_examples=200", "max_empty_fraction=0.1", "corpora=[ncbi-disease]"]
    )
    train, dev, manifest = build_datasets(cfg)
    empty = sum(p["completion"][0]["content"] == EMPTY_ANSWER for p in train)
    assert len(train) == 200 and empty == 20  # 10% of 200; the natural share in NCBI-disease is 46%
    again, _, _ = build_datasets(cfg)
    assert [p["id"] for p in again] == [p["id"] for p in train]
    natural = load_config(SFTSettings, ROOT / "sft/configs/tiny.yaml", ["max_train_examples=400", "max_empty_fraction=null"])
    share = sum(p["completion"][0]["content"] == EMPTY_ANSWER for p in build_datasets(natural)[0]) / 400
    assert 0.35 < share < 0.55
    assert {m["split"] for m in manifest} == {"train", "dev"} and all(len(m["sha256"]) == 64 for m in manifest)


def test_empty_answer_cap_never_raises_the_share():
    # a cap, not a quota: on a corpus with fewer empty answers than the cap, the training set is the
    # data's own (an earlier version topped empties up to the cap and taught cMedQANER empty answers)
    from medner.config import load_config
    from medner.sft.train import SFTSettings, build_datasets

    def ids(cap):
        cfg = load_config(
            SFTSettings, ROOT / "sft/configs/tiny.yaml", ["max_train_examples=48", f"max_empty_fraction={cap}", "corpora=[cmedqaner]"]
        )
        return [p["id"] for p in build_datasets(cfg)[0]]

    assert ids(0.2) == ids("null") and len(ids(0.2)) == 48


def test_padding_free_is_refused_where_it_would_mix_examples(tiny_model, tmp_path):
    """padding_free flattens a batch into one row kept apart by position_ids only; with sdpa attention (CPU)
    the later examples then attend to the earlier ones and their losses change. So the config refuses it
    there. (Should the second half start to fail, transformers keeps flattened examples apart on sdpa, and
    the refusal can go.)"""
    import torch
    from transformers import AutoModelForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    examples = [
        {"input_ids": [5, 6, 7, 8, 9, 10, 11], "labels": [-100] * 4 + [9, 10, 11]},
        {"input_ids": [12, 13, 14, 15], "labels": [-100] * 2 + [14, 15]},
        {"input_ids": [16, 17, 18, 19, 20], "labels": [-100] * 3 + [19, 20]},
    ]

    def token_losses(padding_free: bool) -> torch.Tensor:
        batch = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=padding_free)(examples)
        keys = ("input_ids", "position_ids") if padding_free else ("input_ids", "attention_mask")
        with torch.no_grad():
            logits = model(**{k: batch[k] for k in keys}).logits
        labels = batch["labels"][:, 1:]
        per = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels, reduction="none", ignore_index=-100)
        return per[labels != -100]

    proc = run_medner(
        "sft",
        "train",
        "--config",
        str(ROOT / "sft/configs/tiny.yaml"),
        f"model={tiny_model}",
        f"output_dir={tmp_path}",
        "padding_free=true",
    )
    err = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert proc.returncode == 1 and len(err) == 1 and "padding_free=true needs FlashAttention" in err[0], proc.stderr[-1500:]
    padded, flat = token_losses(False), token_losses(True)
    assert padded.shape == flat.shape == (7,)
    assert torch.allclose(padded[:3], flat[:3], atol=1e-4)  # the first example sees only itself either way
    assert not torch.allclose(padded[3:], flat[3:], atol=1e-3)  # the others see the first: mixed


@pytest.mark.slow
def test_a_pause_file_holds_the_run_and_is_not_training_time(tiny_model, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "PAUSE").touch()
    cmd = [
        sys.executable,
        "-m",
        "medner.cli",
        "sft",
        "train",
        "--config",
        str(ROOT / "sft/configs/tiny.yaml"),
        f"model={tiny_model}",
        f"output_dir={out}",
        "max_steps=3",
        "dev_examples=0",
    ]
    log = tmp_path / "train.log"
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=fh, text=True)
        try:
            deadline = time.time() + 300
            while time.time() < deadline and "paused at step 1" not in log.read_text() and proc.poll() is None:
                time.sleep(0.5)
            assert "paused at step 1" in log.read_text(), log.read_text()[-2000:]
            time.sleep(8)  # held: no second step while the file is there
            assert proc.poll() is None and "step 2" not in log.read_text().split("paused at step 1")[1]
        finally:
            (out / "PAUSE").unlink()
        proc.wait(timeout=300)
    err = log.read_text()
    assert proc.returncode == 0, err[-2000:]
    assert "paused at step 1" in err and "resumed after a pause" in err
    s = json.loads((out / "summary.json").read_text())
    assert s["paused_s"] >= 8 and s["steps"] == 3
    assert s["train_wall_s"] < s["segment_wall_s"] - s["paused_s"] + 1


def test_a_run_of_another_setup_is_not_resumed(tiny_run, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    proc = run_medner(
        "sft",
        "train",
        "--config",
        str(ROOT / "sft/configs/tiny.yaml"),
        f"model={json.loads((out / 'adapter/medner_run.json').read_text())['base_model']['path']}",
        f"output_dir={out}",
        "max_steps=8",
        "prompt_version=v1",
    )
    err = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert (
        proc.returncode == 1 and len(err) == 1 and "holds checkpoints of another setup (prompt_version: 'compact-v1' -> 'v1')" in err[0]
    ), proc.stderr[-1500:]


def test_init_adapter_continues_a_trained_adapter(tiny_run, tiny_model, tmp_path):
    import hashlib

    init = tiny_run / "adapter"
    out = tmp_path / "more"
    # learning rate 0: the result is the init adapter's weights exactly (a fresh LoRA would have lora_B at zero)
    run_medner(
        "sft", "train", "--config", str(ROOT / "sft/configs/tiny.yaml"), f"model={tiny_model}", f"output_dir={out}",
        f"init_adapter={init}", "max_steps=2", "learning_rate=0", "lora_r=4", check=True,
    )  # fmt: skip
    before, after = load_file(init / "adapter_model.safetensors"), load_file(out / "adapter/adapter_model.safetensors")
    assert sorted(before) == sorted(after) and all(bool((before[k] == after[k]).all()) for k in before)
    assert any(float(v.abs().sum()) > 0 for k, v in after.items() if "lora_B" in k)
    assert json.loads((out / "adapter/adapter_config.json").read_text())["r"] == 8  # the init adapter's shape, not lora_r=4
    prior = json.loads((tiny_run / "summary.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train_wall_s_total"] == pytest.approx(prior["train_wall_s"] + summary["train_wall_s"])
    assert summary["examples_seen_total"] == prior["examples_seen"] + 8
    cont = json.loads((out / "adapter/medner_run.json").read_text())["training"]["continued_from"]
    assert cont["adapter_sha256"] == hashlib.sha256((init / "adapter_model.safetensors").read_bytes()).hexdigest()
    assert "continuing" in summary["mode"]


@pytest.mark.parametrize(
    "override,fragment",
    [
        ("init_adapter=no/such/adapter", "init_adapter: no/such/adapter holds no adapter_config.json"),
        ("prompt_version=v1", "was trained with prompt version 'compact-v1', this run has 'v1'"),
    ],
)
def test_init_adapter_errors_are_one_clear_line(tiny_run, tiny_model, tmp_path, override, fragment):
    proc = run_medner(
        "sft", "train", "--config", str(ROOT / "sft/configs/tiny.yaml"), f"model={tiny_model}", f"output_dir={tmp_path}",
        f"init_adapter={tiny_run / 'adapter'}", override,
    )  # fmt: skip
    err = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert proc.returncode == 1 and len(err) == 1 and fragment in err[0], proc.stderr[-1500:]


def test_init_adapter_of_another_base_model_is_refused(tiny_run, tiny_model, tmp_path):
    import shutil

    from safetensors.torch import save_file

    other = tmp_path / "other-base"
    shutil.copytree(tiny_model, other)
    for f in other.glob("*.safetensors"):  # the same architecture, other weights
        w = load_file(f)
        save_file({k: v * 1.01 for k, v in w.items()}, f, metadata={"format": "pt"})
    proc = run_medner(
        "sft", "train", "--config", str(ROOT / "sft/configs/tiny.yaml"), f"model={other}", f"output_dir={tmp_path}/o",
        f"init_adapter={tiny_run / 'adapter'}",
    )  # fmt: skip
    err = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert proc.returncode == 1 and len(err) == 1 and "serve it with the base it was trained on" in err[0], proc.stderr[-1500:]
