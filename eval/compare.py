"""``medner eval compare A B``: two runs' scores side by side, per type, with the bootstrap intervals."""

from __future__ import annotations

import json
from pathlib import Path


def _load(run: str | Path) -> dict:
    p = Path(run) / "report.json" if Path(run).is_dir() else Path(run)
    if not p.is_file():
        raise ValueError(f"no report.json in {run}")
    return json.loads(p.read_text(encoding="utf-8"))


def compare(a: str | Path, b: str | Path) -> str:
    ra, rb = _load(a), _load(b)
    rows = [f"A = {a}", f"B = {b}", "", "| type | F1 A | F1 B | B − A | outside A's 95% CI |", "|---|---:|---:|---:|---|"]

    def row(name, va, vb):
        fa, fb = (va or {}).get("f1"), (vb or {}).get("f1")
        ci = (va or {}).get("f1_ci95")
        if fa is None or fb is None:
            return f"| {name} | {'-' if fa is None else f'{100 * fa:.2f}'} | {'-' if fb is None else f'{100 * fb:.2f}'} | - | - |"
        outside = "-" if not ci else ("yes" if not (ci[0] <= fb <= ci[1]) else "no")
        return f"| {name} | {100 * fa:.2f} | {100 * fb:.2f} | {100 * (fb - fa):+.2f} | {outside} |"

    pa, pb = ra["seqeval"]["per_type"], rb["seqeval"]["per_type"]
    for lab in sorted(set(pa) | set(pb)):
        rows.append(row(lab, pa.get(lab), pb.get(lab)))
    rows.append(row("**micro**", ra["seqeval"]["micro"], rb["seqeval"]["micro"]))
    fa, fb = ra["failures"], rb["failures"]
    rows += ["", "| failure | A | B |", "|---|---:|---:|"]
    rows += [f"| {k} | {fa.get(k, {}).get('count', 0)} | {fb.get(k, {}).get('count', 0)} |" for k in sorted(set(fa) | set(fb))]
    ta, tb = ra.get("throughput") or {}, rb.get("throughput") or {}
    if ta.get("records_per_s") and tb.get("records_per_s"):
        rows += [
            "",
            f"records/s: A {ta['records_per_s']:.2f} ({ta.get('backend')}), B {tb['records_per_s']:.2f} ({tb.get('backend')}), B/A {tb['records_per_s'] / ta['records_per_s']:.2f}",
        ]
    return "\n".join(rows)
