import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from filelock import FileLock

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


def _shared_dir(tmp_path_factory) -> Path:
    """The folder every xdist worker of this session sees (the controller's base temp), else the session's own."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


# a shared build runs on every core: at the session's start the other worker is usually waiting for it
ALL_CORES: dict = {"preexec_fn": use_all_cpus, "env": {"OMP_NUM_THREADS": str(len(ALL_CPUS))}}


def built_once(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
    """``build(folder)`` run once per session whatever the number of xdist workers: the first worker to ask
    builds under a file lock, the others wait for it and reuse the folder (the tiny model and run are each
    about 25 s of a worker's core)."""
    shared = _shared_dir(tmp_path_factory)
    out, done = shared / name, shared / f"{name}.done"
    with FileLock(str(shared / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(out, ignore_errors=True)
            build(out)
            done.touch()
    return out


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """The tiny random Qwen2 model, built once per session by the real command."""
    return built_once(tmp_path_factory, "tiny-qwen2", lambda out: run_medner("sft", "make-tiny", str(out), check=True, **ALL_CORES))


@pytest.fixture(scope="session")
def tiny_run(tiny_model, tmp_path_factory) -> Path:
    """A tiny SFT run (8 steps of the tiny config), shared by the SFT, serve and eval tests."""

    def train(out: Path) -> None:
        cfg = str(ROOT / "sft/configs/tiny.yaml")
        run_medner("sft", "train", "--config", cfg, f"model={tiny_model}", f"output_dir={out}", "max_steps=8", check=True, **ALL_CORES)

    return built_once(tmp_path_factory, "sft-tiny", train)


@pytest.fixture(scope="session")
def tiny_adapter(tiny_run) -> Path:
    return tiny_run / "adapter"


from medner.procs import free_port, medner_server, serve_argv, start, wait_ready  # noqa: E402, F401  (after the offline environment above; free_port re-exported for the tests)


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


def _adapter_copy(tiny_adapter: Path, tmp_path_factory, name: str, scale: float) -> Path:
    def build(out: Path) -> None:
        shutil.copytree(tiny_adapter, out)
        randomize_lora_b(out, scale=scale)

    return built_once(tmp_path_factory, f"adapter-{name}", build)


@pytest.fixture(scope="session")
def strong_adapter(tiny_adapter, tmp_path_factory) -> Path:
    """A copy of the tiny adapter with random non-zero lora_B (see randomize_lora_b)."""
    return _adapter_copy(tiny_adapter, tmp_path_factory, "strong", 0.5)


@pytest.fixture(scope="session")
def agree_adapter(tiny_adapter, tmp_path_factory) -> Path:
    """A stronger copy (lora_B scale 1.0): on the tiny model it changes 6 of the first 16 NCBI-disease test
    replies (scale 0.5: 2-3), enough for an agreement test that can fail."""
    return _adapter_copy(tiny_adapter, tmp_path_factory, "agree", 1.0)


SHARED_SERVERS = "servers.jsonl"


@pytest.fixture(scope="session")
def vllm_server(tiny_model, strong_adapter, tmp_path_factory):
    """One real vLLM server for all serving and eval tests: the tiny model with the strong adapter,
    merged and served alone as "ner" (the CPU build's rule). Under xdist one server serves every worker: the
    first to ask starts it, on all cores, and the controller stops it when the session ends
    (pytest_sessionfinish); a second server would cost another 40 s of a worker's core."""
    overrides = [f"model={tiny_model}", f"adapter={strong_adapter}"]
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        log = tmp_path_factory.mktemp("serve") / "serve.log"
        with medner_server(ROOT / "serve/configs/tiny.yaml", overrides, log=log, timeout_s=600) as url:
            yield url
        return
    shared = _shared_dir(tmp_path_factory)
    state = shared / "vllm_server.json"
    with FileLock(str(shared / "vllm_server.lock")):
        if not state.exists():
            port, log = free_port(), shared / "vllm_server.log"
            proc = start(serve_argv(ROOT / "serve/configs/tiny.yaml", overrides, port), log, preexec_fn=use_all_cpus)
            with (shared / SHARED_SERVERS).open("a") as fh:
                fh.write(json.dumps({"pid": proc.pid}) + "\n")
            url = f"http://127.0.0.1:{port}/v1"
            wait_ready(url, proc, 600, log=log)
            state.write_text(json.dumps({"url": url}))
    yield json.loads(state.read_text())["url"]


def _alive(pid: int) -> bool:
    """Running (a zombie, left by a worker that never waited for it, has ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _stop_group(pid: int, timeout_s: float = 60) -> None:
    """SIGTERM to a server started by a worker (its own process group), SIGKILL to the group if it lingers."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.5)
    if not _alive(pid):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def pytest_sessionfinish(session) -> None:
    """On the xdist controller (or a run without workers): stop the servers the workers shared."""
    if hasattr(session.config, "workerinput"):
        return
    registry = session.config._tmp_path_factory.getbasetemp() / SHARED_SERVERS
    if registry.is_file():
        for line in registry.read_text().splitlines():
            _stop_group(json.loads(line)["pid"])
