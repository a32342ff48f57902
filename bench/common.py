"""Shared helpers of the benchmarks: machine description, result files, BENCHMARKS.md, a server."""

from __future__ import annotations

import datetime as dt
import json
import shlex
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from medner import procs
from medner.machine import describe as machine

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_result(
    name: str, metrics: dict, command: str | None = None, notes: str | None = None, extra: dict | None = None, results: Path | None = None
) -> Path:
    """``bench/results/<name>.json`` (and the BENCHMARKS.md table); ``results`` = another folder, table untouched."""
    folder = results or RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    res = {
        "benchmark": name,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "command": command or " ".join(shlex.quote(a) for a in ["python", "-m", *sys.argv]),
        "git_commit": git_commit(),
        "metrics": metrics,
    }
    if notes:
        res["notes"] = notes
    if extra:
        res.update(extra)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(res, indent=2, ensure_ascii=False) + "\n")
    if results is None:
        update_table()
    return path


TABLE_FIGURES = 5  # scalar figures per row of the generated table


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def update_table() -> None:
    """Regenerate the results table in BENCHMARKS.md (between its markers) from bench/results/*.json: the first
    few scalar figures of each result (the rest, the machine and the command are in its JSON file)."""
    doc = ROOT / "BENCHMARKS.md"
    rows = ["| benchmark | first figures (all in the JSON) | date |", "|---|---|---|"]
    for p in sorted(RESULTS.glob("*.json")):
        r = json.loads(p.read_text())
        scalars = [(k, v) for k, v in r["metrics"].items() if not isinstance(v, (dict, list))]
        figs = "; ".join(f"{k} {_fmt(v)}" for k, v in scalars[:TABLE_FIGURES])
        rows.append(f"| [{r['benchmark']}](bench/results/{p.name}) | {figs} | {r['date'][:10]} |")
    table = "\n".join(rows)
    start, end = "<!-- results:start -->", "<!-- results:end -->"
    text = doc.read_text() if doc.exists() else f"# Benchmarks\n\n{start}\n{end}\n"
    pre, rest = text.split(start, 1)
    _, post = rest.split(end, 1)
    doc.write_text(f"{pre}{start}\n{table}\n{end}{post}")


def medner(*args: str, log: Path | None = None, check: bool = True) -> float:
    """Run a medner command; returns its wall time in seconds."""
    t = time.perf_counter()
    print("+ medner " + " ".join(args), flush=True)
    if log:
        with log.open("a") as fh:
            proc = subprocess.run([sys.executable, "-m", "medner.cli", *args], stdout=fh, stderr=subprocess.STDOUT)
    else:
        proc = subprocess.run([sys.executable, "-m", "medner.cli", *args])
    if check and proc.returncode != 0:
        hint = ""
        if proc.returncode == -9:  # SIGKILL: on a training run almost always the kernel's out-of-memory killer
            hint = " (killed: most often out of memory; halve batch_size and double grad_accum, or set group_by_length=true)"
        raise SystemExit(f"medner {' '.join(args)} failed ({proc.returncode}){hint}" + (f"; see {log}" if log else ""))
    return time.perf_counter() - t


@contextmanager
def server(model: str, adapter: str | None, corpus: str, log: Path, extra: tuple[str, ...] = ()):
    """A real `medner serve` (one model per engine) for the duration of the block; yields its base URL."""
    overrides = [f"model={model}", f"adapter={adapter if adapter else 'null'}", f"corpus={corpus}", *extra]
    print("+ medner serve " + " ".join(overrides), flush=True)
    with procs.medner_server(ROOT / "serve/configs/default.yaml", overrides, log=log) as url:
        yield url


def report(run_dir: Path) -> dict:
    return json.loads((run_dir / "report.json").read_text())
