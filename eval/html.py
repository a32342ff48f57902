"""``report.html``: the eval report to look at — scores per type, the plot, and the records with errors shown
as highlighted sentences, gold and predicted spans side by side. Self-contained (inline CSS, the plot as a
relative image), nothing fetched from elsewhere. Without text (``--no-text``), no sentence appears."""

from __future__ import annotations

import html
from collections.abc import Sequence

from medner.eval.score import pct as _pct

CSS = """body{font:14px/1.5 system-ui,sans-serif;max-width:1100px;margin:1rem auto;padding:0 1rem;color:#222}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ddd;padding:.2rem .6rem;text-align:right}td:first-child,th:first-child{text-align:left}
.pair{display:grid;grid-template-columns:8rem 1fr;gap:.1rem .8rem;margin:.6rem 0;padding:.4rem .6rem;border-left:3px solid #ccc}
.lab{color:#666;font-size:.85rem}mark{border-radius:3px;padding:0 .15rem}mark.ok{background:#b7e4c7}mark.fp{background:#f4acb7}mark.fn{background:#ffd166}
mark sub{font-size:.65rem;margin-left:.15rem;opacity:.75}"""


def _marked(text: str, spans: Sequence[tuple[int, int, str]], other: set[tuple[int, int, str]], miss_class: str) -> str:
    out, at = [], 0
    for a, b, t in sorted(spans):
        if a < at:
            continue
        cls = "ok" if (a, b, t) in other else miss_class
        out.append(html.escape(text[at:a]))
        out.append(f'<mark class="{cls}" title="{html.escape(t)} [{a}, {b})">{html.escape(text[a:b])}<sub>{html.escape(t)}</sub></mark>')
        at = b
    out.append(html.escape(text[at:]))
    return "".join(out)


def render(report: dict, records: Sequence[dict] | None = None, preds: dict | None = None, with_text: bool = True, limit: int = 100) -> str:
    run = report.get("run", {})
    s = report["seqeval"]
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{_pct(v['precision'])}</td><td>{_pct(v['recall'])}</td><td>{_pct(v['f1'])}</td><td>{v['support']}</td></tr>"
        for k, v in sorted(s["per_type"].items())
    )
    m = s["micro"]
    rows += (
        f"<tr><th>micro</th><th>{_pct(m['precision'])}</th><th>{_pct(m['recall'])}</th><th>{_pct(m['f1'])}</th><th>{m['support']}</th></tr>"
    )
    fails = "".join(f"<tr><td>{html.escape(k)}</td><td>{v['count']}</td></tr>" for k, v in report["failures"].items())
    parts = [
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>medner eval: {html.escape(str(run.get("corpus", "")))} {html.escape(str(run.get("split", "")))}</title>',
        f"<style>{CSS}</style></head><body>",
        f"<h1>medner eval: {html.escape(str(run.get('corpus', '?')))} {html.escape(str(run.get('split', '')))}</h1>",
        f"<p>{report['records']} records; backend <code>{html.escape(str(run.get('backend')))}</code>, constrained {run.get('constrained')}, grounded {run.get('grounded', False)}.</p>",
        "<h2>Strict entity-level scores</h2><table><tr><th>type</th><th>P</th><th>R</th><th>F1</th><th>support</th></tr>",
        rows,
        "</table>",
        '<img src="per_type_f1.png" alt="per-type F1">',
        "<h2>Failures</h2><table><tr><th>failure</th><th>count</th></tr>",
        fails,
        "</table>",
    ]
    if with_text and records is not None and preds is not None:
        parts.append(
            '<h2>Records with errors</h2><p><mark class="ok">found</mark> <mark class="fn">missed (gold only)</mark> '
            '<mark class="fp">false positive (predicted only)</mark></p>'
        )
        shown = 0
        for r in records:
            gold = {(e["start"], e["end"], e["type"]) for e in r["entities"]}
            p = preds.get(r["id"], {})
            pred = {(e["start"], e["end"], e["type"]) for e in p.get("entities", []) if "start" in e}
            if gold == pred and p.get("status", "ok") == "ok":
                continue
            rid = html.escape(r["id"])
            parts.append(
                f'<div class="pair" id="{rid}"><span class="lab">{rid}<br>gold</span><span>{_marked(r["text"], sorted(gold), pred, "fn")}</span>'
                f'<span class="lab">predicted{"" if p.get("status", "ok") == "ok" else " (" + html.escape(str(p.get("status"))) + ")"}</span>'
                f"<span>{_marked(r['text'], sorted(pred), gold, 'fp')}</span></div>"
            )
            shown += 1
            if shown >= limit:
                parts.append(f"<p>… the first {limit} records with errors are shown; all are in predictions.jsonl.</p>")
                break
    elif not with_text:
        parts.append("<p>Written without text (--no-text): no sentence from the records appears in this report.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)
