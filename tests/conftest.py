import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def run_medner(*args: str, check: bool = False, timeout: int = 900, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    """Run the real console command (as a user would) and capture its output."""
    proc = subprocess.run(
        [sys.executable, "-m", "medner.cli", *args], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})}, **kw,
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
    run_medner("sft", "train", "--config", str(ROOT / "sft/configs/tiny.yaml"), f"model={tiny_model}", f"output_dir={out}", "max_steps=8", check=True)
    return out


@pytest.fixture(scope="session")
def tiny_adapter(tiny_run) -> Path:
    return tiny_run / "adapter"


from medner.serve.launch import free_port, wait_ready  # noqa: E402  (after the offline environment above)


@pytest.fixture(scope="session")
def vllm_server(tiny_model, tiny_adapter, tmp_path_factory):
    """One real vLLM server (the tiny model + the tiny adapter) for all serving and eval tests."""
    import signal

    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with log.open("w") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "medner.cli", "serve", "--config", str(ROOT / "serve/configs/tiny.yaml"),
             f"model={tiny_model}", f"adapter={tiny_adapter}", f"port={port}"],
            stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        try:
            wait_ready(url, proc, 600)
        except RuntimeError as e:
            raise RuntimeError(f"{e}\n{log.read_text()[-3000:]}") from None
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
