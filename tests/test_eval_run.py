"""`medner eval run` end to end on the tiny model: real server, offline engine, transformers, resume."""

import json
import os

import pytest
from conftest import ROOT, run_medner

pytestmark = pytest.mark.slow
CFG = str(ROOT / "eval/configs/default.yaml")


def read_preds(path):
    return [json.loads(l) for l in path.open()]


def check_run(out, n, fresh=None):
    rep = json.loads((out / "report.json").read_text())
    preds = read_preds(out / "predictions.jsonl")
    assert len(preds) == n and len({p["id"] for p in preds}) == n
    assert rep["records"] == n and rep["predictions"] == n
    for p in preds:
        assert p["status"] in ("ok", "truncated", "invalid_json", "schema_violation", "error")
        assert "raw" in p and "finish_reason" in p and "latency_s" in p
        for e in p["entities"]:
            assert p["text"][e["start"] : e["end"]] == e["text"]
    # throughput covers the records predicted by this invocation only
    assert rep["throughput"]["records"] == (n if fresh is None else fresh) and rep["throughput"]["records_per_s"] > 0
    assert (out / "report.md").is_file() and (out / "per_type_f1.png").is_file() and (out / "config.resolved.yaml").is_file()
    return rep, preds


def test_eval_through_the_real_server_and_resume(vllm_server, tmp_path):
    out = tmp_path / "server"
    run_medner("eval", "run", "--config", CFG, f"url={vllm_server}", "limit=10", f"out={out}", check=True)
    check_run(out, 10)
    # an interrupted run: keep 10 predictions plus a torn line, then ask for 20
    with (out / "predictions.jsonl").open("a") as f:
        f.write('{"id": "ncbi-disease:test:10", "entit')
    run_medner("eval", "run", "--config", CFG, f"url={vllm_server}", "limit=20", f"out={out}", check=True)
    rep, preds = check_run(out, 20, fresh=10)
    assert rep["run"]["resumed_records"] == 10
    assert {p["id"] for p in preds} == {f"ncbi-disease:test:{i}" for i in range(20)}


def test_resume_refuses_predictions_of_another_setup(tmp_path):
    (tmp_path / "predictions.jsonl").write_text('{"id": "ncbi-disease:test:0", "entities": []}\n')
    (tmp_path / "config.resolved.yaml").write_text("backend: server\nserved_model: base\ncorpus: ncbi-disease\nsplit: test\n")
    proc = run_medner("eval", "run", "--config", CFG, "served_model=ner", f"out={tmp_path}", "url=http://127.0.0.1:9/v1")
    assert proc.returncode == 1 and "holds predictions of another setup (served_model: 'base' -> 'ner')" in proc.stderr


def test_eval_unconstrained_counts_every_failed_reply(vllm_server, tmp_path):
    out = tmp_path / "free"
    run_medner(
        "eval", "run", "--config", CFG, f"url={vllm_server}", "constrained=false", "max_tokens=16", "limit=5", f"out={out}", check=True
    )
    rep, preds = check_run(out, 5)
    # free decoding from a random model: the replies are not valid answers, and the report counts them
    fails = sum(rep["failures"][k]["count"] for k in ("invalid_json", "schema_violation", "truncated"))
    assert fails == 5


def test_eval_offline_vllm_engine(tiny_model, tiny_adapter, tmp_path):
    out = tmp_path / "offline"
    run_medner(
        "eval",
        "run",
        "--config",
        CFG,
        "backend=vllm",
        f"model={tiny_model}",
        f"adapter={tiny_adapter}",
        "limit=20",
        "kv_cache_gib=1",
        "enforce_eager=true",
        f"out={out}",
        check=True,
    )
    rep, preds = check_run(out, 20)
    assert rep["throughput"]["backend"] == "vllm"
    assert all(p["finish_reason"] == "stop" for p in preds)  # bounded schema: every reply ends by itself


def test_eval_transformers_backend_with_schema(tiny_model, tiny_adapter, tmp_path):
    out = tmp_path / "hf"
    run_medner(
        "eval",
        "run",
        "--config",
        CFG,
        "backend=hf",
        f"model={tiny_model}",
        f"adapter={tiny_adapter}",
        "limit=4",
        "batch_size=4",
        "max_tokens=64",
        f"out={out}",
        check=True,
    )
    rep, preds = check_run(out, 4)
    assert rep["failures"]["invalid_json"]["count"] == 0 and rep["failures"]["schema_violation"]["count"] == 0


def test_eval_refuses_adapter_for_another_label_set(tiny_model, tiny_adapter, tmp_path):
    proc = run_medner(
        "eval",
        "run",
        "--config",
        CFG,
        "backend=hf",
        f"model={tiny_model}",
        f"adapter={tiny_adapter}",
        "corpus=cmedqaner",
        "limit=2",
        f"out={tmp_path}",
    )
    assert proc.returncode == 1 and "not on 'cmedqaner'" in proc.stderr


def test_eval_unreachable_server(tmp_path):
    from conftest import free_port

    proc = run_medner("eval", "run", "--config", CFG, f"url=http://127.0.0.1:{free_port()}/v1", "limit=2", f"out={tmp_path}")
    assert proc.returncode == 1 and "cannot reach the server" in proc.stderr


def _children(pid: int) -> set[int]:
    """Every descendant process of ``pid`` (from /proc)."""
    parent = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = open(f"/proc/{d}/stat").read()
                parent[int(d)] = int(stat.rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        kids = {c for c, pp in parent.items() if pp == p}
        out |= kids
        todo += list(kids)
    return out


def _alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
def test_sigterm_stops_the_offline_engine_with_the_command(tiny_model, tiny_adapter, tmp_path):
    """`medner eval run backend=vllm` stopped with SIGTERM (a scheduler, `kill`) takes vLLM's engine processes with it."""
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "medner.cli",
            "eval",
            "run",
            "--config",
            str(ROOT / "eval/configs/default.yaml"),
            "backend=vllm",
            f"model={tiny_model}",
            f"adapter={tiny_adapter}",
            "enforce_eager=true",
            "split=train",
            f"out={tmp_path}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "1"},  # the engine in its own processes, as users run it
    )
    deadline = time.time() + 300
    while time.time() < deadline and not _children(proc.pid):  # the engine core starts in a child process
        assert proc.poll() is None, "eval ended before it could be stopped"
        time.sleep(1)
    time.sleep(10)  # the engine's own workers, then generation under way
    assert proc.poll() is None, "eval ended before it could be stopped"
    kids = _children(proc.pid)
    assert kids, "the offline engine runs no child process to check"
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    time.sleep(5)
    assert not [k for k in kids if _alive(k)], "vLLM engine processes outlived the command"
