"""Server processes: start one, wait until its ``/v1/models`` answers, stop it cleanly. The one copy.

Used by ``medner serve`` (the vLLM child), the demo, the benchmarks and the tests (a ``medner serve``
child). The child gets its own process group, so stopping it also stops the engine processes vLLM
spawns, even when it ignores SIGTERM.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx


def free_port(host: str = "127.0.0.1") -> int:
    """A port that is free now on ``host`` (for tests, the demo and benchmarks)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen | None, timeout_s: float, api_key: str | None = None, log: Path | None = None) -> dict:
    """Poll ``{url}/models`` until it answers 200; raise if the process dies or time runs out.

    The error names the log file and quotes its last lines, so a failed start says why.
    """
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    deadline = time.monotonic() + timeout_s

    def tail() -> str:
        if log and log.is_file():
            lines = log.read_text(errors="replace").splitlines()[-15:]
            return f" (log {log}):\n" + "\n".join(lines)
        return " (see its log above)"

    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode} before it was ready{tail()}")
        try:
            r = httpx.get(f"{url}/models", headers=headers, timeout=5)
            if r.status_code == 200:
                return r.json()
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError(f"server at {url} not ready after {timeout_s:.0f} s{tail()}")


def serve_argv(config: str | Path, overrides: Sequence[str], port: int) -> list[str]:
    """The ``medner serve --config CONFIG key=value... port=PORT`` command line, run by this interpreter."""
    return [sys.executable, "-m", "medner.cli", "serve", "--config", str(config), *overrides, f"port={port}"]


def start(argv: Sequence[str], log: Path | None = None, env: dict | None = None, preexec_fn=None) -> subprocess.Popen:
    """Start ``argv`` in its own process group, output to ``log`` (appended) or inherited."""
    out = open(log, "a") if log else None
    try:
        return subprocess.Popen(
            list(argv), stdout=out, stderr=subprocess.STDOUT if out else None, env=env, start_new_session=True, preexec_fn=preexec_fn
        )
    finally:
        if out:
            out.close()


def stop(proc: subprocess.Popen, timeout_s: float = 60) -> None:
    """SIGTERM, then SIGKILL to the whole process group if it has not ended within ``timeout_s``."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextlib.contextmanager
def medner_server(
    config: str | Path,
    overrides: Sequence[str] = (),
    log: Path | None = None,
    port: int | None = None,
    timeout_s: float = 900,
    env: dict | None = None,
) -> Iterator[str]:
    """A real ``medner serve --config CONFIG key=value...`` for the duration of the block; yields its base URL."""
    port = port or free_port()
    proc = start(serve_argv(config, overrides, port), log, env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}/v1"
    try:
        wait_ready(url, proc, timeout_s, log=log)
        yield url
    finally:
        stop(proc)
