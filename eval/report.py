"""Reports of a scored run: ``report.json`` (machine-readable), ``report.md``, ``report.html`` and ``per_type_f1.png``."""

from __future__ import annotations

from pathlib import Path

from medner.eval.score import dump, pct

_pct = pct


def table(report: dict) -> str:
    s = report["seqeval"]
    rows = ["| type | precision | recall | F1 | F1 95% CI | support |", "|---|---:|---:|---:|---|---:|"]
    for lab, v in sorted(s["per_type"].items()):
        ci = v.get("f1_ci95")
        rows.append(
            f"| {lab} | {_pct(v['precision'])} | {_pct(v['recall'])} | {_pct(v['f1'])} | {f'{_pct(ci[0])}–{_pct(ci[1])}' if ci else '-'} | {v['support']} |"
        )
    m, ci = s["micro"], s["micro"].get("f1_ci95")
    rows.append(
        f"| **micro** | {_pct(m['precision'])} | {_pct(m['recall'])} | **{_pct(m['f1'])}** | {f'{_pct(ci[0])}–{_pct(ci[1])}' if ci else '-'} | {m['support']} |"
    )
    rows.append(f"| macro | {_pct(s['macro']['precision'])} | {_pct(s['macro']['recall'])} | {_pct(s['macro']['f1'])} | - | |")
    return "\n".join(rows)


# long: the report's sections in reading order
def markdown(report: dict, with_text: bool = True) -> str:
    run = report.get("run", {})
    lines = [f"# medner eval: {run.get('corpus', '?')} {run.get('split', '')}", ""]
    if run:
        lines += [
            f"backend `{run.get('backend')}`, model `{run.get('model')}`, adapter `{run.get('adapter')}`, constrained decoding: {run.get('constrained')}",
            "",
        ]
    lines += [
        f"{report['records']} records, {report['predictions']} predictions "
        f"({report['failures']['missing']['count']} missing, scored as no entities).",
        "",
    ]
    lines += ["## Strict entity-level scores (seqeval, IOB2, mode=strict)", "", table(report), ""]
    sp = report["spans"]
    lines += [
        "## Span level (characters, before the BIO overlap rule)",
        "",
        "| match | precision | recall | F1 |",
        "|---|---:|---:|---:|",
        f"| exact | {_pct(sp['exact']['precision'])} | {_pct(sp['exact']['recall'])} | {_pct(sp['exact']['f1'])} |",
        f"| partial (overlap, same type) | {_pct(sp['partial']['precision'])} | {_pct(sp['partial']['recall'])} | {_pct(sp['partial']['f1'])} |",
        "",
        f"Overlapping predictions that BIO cannot hold, resolved by the data stage's rule: {report['overlapping_predictions_resolved']}.",
        "",
    ]
    if report.get("other_types_left_out"):
        lines += [
            f"Mentions of types outside the corpus, written by a model trained on more types and left out: {report['other_types_left_out']}.",
            "",
        ]
    lines += ["## Failures", "", "| failure | count |", "|---|---:|"]
    for k, v in report["failures"].items():
        lines.append(f"| {k} | {v['count']} |")
    lines.append("")
    for k, v in report["failures"].items():
        if v["examples"]:
            lines.append(f"Examples of `{k}`:")
            for ex in v["examples"]:
                bits = [f"`{ex['id']}`"] + [f"{key}: `{str(val)[:160]}`" for key, val in ex.items() if key != "id" and val is not None]
                lines.append("- " + ", ".join(bits))
            lines.append("")
    thr = report.get("throughput")
    if thr:
        lines += [
            "## Throughput",
            "",
            f"backend `{thr.get('backend')}`: {thr['records']} records"
            + (
                f" in {thr['wall_s']:.1f} s = **{thr['records_per_s']:.2f} records/s**, {thr['output_tokens_per_s']:.1f} output tokens/s"
                if "wall_s" in thr
                else ""
            )
            + f"; latency p50 {thr['latency_p50_s']:.2f} s, p95 {thr['latency_p95_s']:.2f} s.",
            "",
        ]
    for title, key in (("false positives", "false_positives"), ("false negatives", "false_negatives")):
        lines += [f"## The 20 most frequent {title}", ""]
        if with_text:
            lines += ["| mention | type | count | example context | record |", "|---|---|---:|---|---|"]
            for r in report[key]:
                ctx = r["context"].replace("|", "\\|").replace("\n", " ")
                lines.append(f"| {r['mention']} | {r['type']} | {r['count']} | {ctx} | `{r['id']}` |")
        else:
            lines += ["| type | count | record |", "|---|---:|---|"]
            lines += [f"| {r['type']} | {r['count']} | `{r['id']}` |" for r in report[key]]
        lines.append("")
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per = sorted(report["seqeval"]["per_type"].items())
    fig, ax = plt.subplots(figsize=(max(4, 0.6 * len(per) + 2), 3.5))
    names = [k for k, _ in per] + ["micro"]
    vals = [v["f1"] for _, v in per] + [report["seqeval"]["micro"]["f1"]]
    ax.bar(names, vals, color=["tab:blue"] * len(per) + ["tab:orange"])
    ax.set_ylim(0, 1)
    ax.set_ylabel("strict F1")
    ax.set_title("per-type F1")
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(report: dict, out: str | Path, with_text: bool = True, records=None, preds: dict | None = None) -> None:
    """report.json, report.md, per_type_f1.png and report.html (with the records and predictions, when given,
    the records with errors as highlighted sentences)."""
    from medner.eval.html import render

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dump(report, out / "report.json")
    (out / "report.md").write_text(markdown(report, with_text), encoding="utf-8")
    (out / "report.html").write_text(render(report, records, preds, with_text), encoding="utf-8")
    plot(report, out / "per_type_f1.png")
    print(table(report))
    fails = ", ".join(f"{k} {v['count']}" for k, v in report["failures"].items())
    print(f"failures: {fails}")
    print(f"report: {out / 'report.md'}")
