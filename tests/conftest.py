import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# vLLM's offline engine in the calling process: the tiny model's engine starts in ~10 s instead of ~35 s (no
# engine-core and worker processes importing vLLM again). The server is unaffected; the SIGTERM test, which is
# about those processes, sets it back to 1
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


ALL_CPUS = sorted(os.sched_getaffinity(0))


def use_all_cpus() -> None:
    """``preexec_fn`` for a command that needs every core whatever the worker's share (two training processes)."""
    os.sched_setaffinity(0, ALL_CPUS)


def _pin_xdist_worker() -> None:
    """Under `pytest -n N` each worker gets its own share of the cores, inherited by every server, engine and
    trainer it starts: vLLM's CPU engine binds its OpenMP threads to every allowed core, so two workers' engines
    would otherwise contend for the same cores."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    cpus = ALL_CPUS
    if not worker or count < 2 or len(cpus) < 2:
        return
    mine = set(cpus[int(worker.removeprefix("gw")) % count :: count]) or set(cpus)
    os.sched_setaffinity(0, mine)
    os.environ["OMP_NUM_THREADS"] = str(len(mine))


_pin_xdist_worker()


def run_medner(*args: str, check: bool = False, timeout: int = 900, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    """Run the real console command (as a user would) and capture its output."""
    proc = subprocess.run(
        [sys.executable, "-m", "medner.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        **kw,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"medner {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def registry():
    from medner.data.registry import load_registry

    return load_registry()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """The tiny random Qwen2 model, built once per session by the real command."""
    out = tmp_path_factory.mktemp("models") / "tiny-qwen2"
    run_medner("sft", "make-tiny", str(out), check=True)
    return out


@pytest.fixture(scope="session")
def tiny_run(tiny_model, tmp_path_factory) -> Path:
    """A tiny SFT run (8 steps of the tiny config), shared by the SFT, serve and eval tests."""
    out = tmp_path_factory.mktemp("runs") / "sft-tiny"
    run_medner(
        "sft",
        "train",
        "--config",
        str(ROOT / "sft/configs/tiny.yaml"),
        f"model={tiny_model}",
        f"output_dir={out}",
        "max_steps=8",
        check=True,
    )
    return out


@pytest.fixture(scope="session")
def tiny_adapter(tiny_run) -> Path:
    return tiny_run / "adapter"


from medner.procs import free_port, medner_server  # noqa: E402, F401  (after the offline environment above; free_port re-exported for the tests)


def randomize_lora_b(adapter_dir: Path, seed: int = 0, scale: float = 0.5) -> None:
    """Give every lora_B matrix random non-zero values: an adapter whose effect on greedy replies is large
    and deterministic (a briefly trained tiny adapter may change nothing). The run record stays."""
    import torch
    from safetensors.torch import load_file, save_file

    p = adapter_dir / "adapter_model.safetensors"
    w = load_file(p)
    g = torch.Generator().manual_seed(seed)
    for k, v in w.items():
        if "lora_B" in k:
            w[k] = (torch.randn(v.shape, generator=g) * scale).to(v.dtype)
    save_file(w, p)


@pytest.fixture(scope="session")
def strong_adapter(tiny_adapter, tmp_path_factory) -> Path:
    """A copy of the tiny adapter with random non-zero lora_B (see randomize_lora_b)."""
    import shutil

    out = tmp_path_factory.mktemp("adapters") / "strong"
    shutil.copytree(tiny_adapter, out)
    randomize_lora_b(out)
    return out


@pytest.fixture(scope="session")
def agree_adapter(tiny_adapter, tmp_path_factory) -> Path:
    """A stronger copy (lora_B scale 1.0): on the tiny model it changes 6 of the first 16 NCBI-disease test
    replies (scale 0.5: 2-3), enough for an agreement test that can fail."""
    import shutil

    out = tmp_path_factory.mktemp("adapters") / "agree"
    shutil.copytree(tiny_adapter, out)
    randomize_lora_b(out, scale=1.0)
    return out


@pytest.fixture(scope="session")
def vllm_server(tiny_model, strong_adapter, tmp_path_factory):
    """One real vLLM server for all serving and eval tests: the tiny model with the strong adapter,
    merged and served alone as "ner" (the CPU build's rule)."""
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with medner_server(
        ROOT / "serve/configs/tiny.yaml", [f"model={tiny_model}", f"adapter={strong_adapter}"], log=log, timeout_s=600
    ) as url:
        yield url
