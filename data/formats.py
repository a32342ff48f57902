"""Annotation-tool formats -> records, and records -> those formats.

A registry entry names its ``format`` (default ``bio``):

* ``labelstudio``  a Label Studio JSON export: a list of tasks with ``data.text`` and ``annotations[].result[]``
                   of ``type: labels`` (``value.start``, ``value.end``, ``value.labels``); the first annotation
                   set of a task is the gold one;
* ``doccano``      Doccano JSONL: ``text`` with ``label: [[start, end, type], ...]`` or
                   ``entities: [{start_offset, end_offset, label}, ...]``;
* ``brat``         brat standoff: a folder (or one ``.txt``) of ``X.txt`` + ``X.ann``; ``T`` lines are entities;
                   discontinuous ones (``0 5;9 12``) are reported and skipped; other lines are ignored.

Tokens come from :func:`medner.data.ground.simple_token_offsets`: words and single punctuation marks in English
(the inverse of the detokenizer's joining), one token per character in Chinese (the registry's ``lang``). An
annotation whose ends do not fall on token boundaries is refused with its place (``FILE:LINE``, the line of
the task or record) and what the tokens there are: it is fixed in the tool, never silently snapped.
Overlapping or nested annotations are kept in the records and reported (BIO views drop the later of two
overlapping mentions and say so).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

from medner.data.bio import BioError, Problem
from medner.data.ground import simple_token_offsets
from medner.data.jsonl import read_jsonl

log = logging.getLogger(__name__)

FORMATS = ("bio", "labelstudio", "doccano", "brat")


def _json_array_items(text: str) -> Iterator[tuple[int, object]]:
    """The elements of a top-level JSON array with the line each starts on."""
    dec = json.JSONDecoder()
    i = len(text) - len(text.lstrip())
    if not text[i : i + 1] == "[":
        raise ValueError("expected a JSON list of tasks (a Label Studio JSON export)")
    i += 1
    while True:
        while i < len(text) and text[i] in " \t\r\n,":
            i += 1
        if i >= len(text):
            raise ValueError("the list of tasks is not closed")
        if text[i] == "]":
            return
        line = text.count("\n", 0, i) + 1
        obj, i = dec.raw_decode(text, i)
        yield line, obj


def _docs_labelstudio(path: Path) -> Iterator[tuple]:
    for line, task in _json_array_items(path.read_text(encoding="utf-8-sig")):
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict) or not isinstance(task["data"].get("text"), str):
            raise BioError([Problem(str(path), line, "task without a string data.text")])
        anns = task.get("annotations") or task.get("completions") or []
        spans = []
        for r in anns[0].get("result", []) if anns else []:
            if r.get("type") != "labels":
                continue
            v = r.get("value", {})
            for lab in v.get("labels", []):
                spans.append((v.get("start"), v.get("end"), lab))
        yield line, task["data"]["text"], spans


def _docs_doccano(path: Path) -> Iterator[tuple]:
    for line, obj in read_jsonl(path):
        if not isinstance(obj.get("text"), str):
            raise BioError([Problem(str(path), line, "record without a string 'text'")])
        if "entities" in obj:
            spans = [(e.get("start_offset"), e.get("end_offset"), e.get("label")) for e in obj["entities"]]
        else:
            spans = [tuple(x) if isinstance(x, (list, tuple)) and len(x) == 3 else (None, None, None) for x in obj.get("label", [])]
        yield line, obj["text"], spans


def _docs_brat(path: Path) -> Iterator[tuple]:
    txts = sorted(path.glob("*.txt")) if path.is_dir() else [path]
    for txt in txts:
        ann = txt.with_suffix(".ann")
        text = txt.read_text(encoding="utf-8-sig")
        spans = []
        if ann.is_file():
            for line, raw in enumerate(ann.read_text(encoding="utf-8-sig").splitlines(), start=1):
                if not raw.startswith("T"):
                    continue
                parts = raw.split("\t")
                if len(parts) < 2 or len(parts[1].split(" ")) < 3:
                    raise BioError([Problem(str(ann), line, "malformed T line (expected: T<n><TAB><type> <start> <end><TAB><text>)")])
                label, rest = parts[1].split(" ", 1)
                if ";" in rest:
                    log.warning("%s:%d: discontinuous entity skipped (medner mentions are contiguous)", ann, line)
                    continue
                a, b = rest.split(" ")
                spans.append((int(a), int(b), label, f"{ann}:{line}"))
        yield 1, text, spans, str(txt)


# long: one branch per annotation-tool format, each short, sharing one error style (file:line, field)
def read_annotated(path: str | Path, fmt: str, lang: str, labels: list[str] | None, rec_prefix: str) -> list[dict]:
    """Records from an annotation-tool file. Raises BioError with every FILE:LINE problem found."""
    path = Path(path)
    if fmt not in FORMATS or fmt == "bio":
        raise ValueError(f"format must be one of {', '.join(FORMATS[1:])} here, not {fmt!r}")
    if not path.exists():
        raise BioError([Problem(str(path), None, "file not found")])
    reader = {"labelstudio": _docs_labelstudio, "doccano": _docs_doccano, "brat": _docs_brat}[fmt]
    problems: list[Problem] = []
    records = []
    try:
        docs = list(reader(path))
    except BioError:
        raise
    except (ValueError, OSError) as e:
        if str(e).startswith(f"{path}:"):  # already placed at file:line (read_jsonl)
            raise
        raise BioError([Problem(str(path), None, str(e))]) from None
    for i, doc in enumerate(docs):
        line, text, spans = doc[0], doc[1], doc[2]
        where_file = doc[3] if len(doc) > 3 else str(path)
        offsets = simple_token_offsets(text, lang)
        starts, ends = {a for a, _ in offsets}, {b for _, b in offsets}
        entities: list[dict] = []
        for sp in spans:
            a, b, lab = sp[0], sp[1], sp[2]
            where = sp[3] if len(sp) > 3 else f"{where_file}:{line}"
            wfile, _, wline = where.rpartition(":")
            place = (wfile, int(wline))
            if not (isinstance(a, int) and isinstance(b, int) and 0 <= a < b <= len(text)) or not isinstance(lab, str):
                problems.append(
                    Problem(
                        place[0],
                        place[1],
                        f"annotation {[a, b, lab]!r} is not [start, end, label] within the text ({len(text)} characters)",
                    )
                )
                continue
            if labels is not None and lab not in labels:
                problems.append(Problem(place[0], place[1], f"unknown label {lab!r} (this corpus has: {', '.join(sorted(labels))})"))
                continue
            if a not in starts or b not in ends:
                around = [text[x:y] for x, y in offsets if y > a and x < b]
                problems.append(
                    Problem(
                        place[0],
                        place[1],
                        f"annotation [{a}, {b}) {text[a:b]!r} ({lab}) does not fall on token boundaries "
                        f"(the tokens there: {around!r}); fix it in the annotation tool",
                    )
                )
                continue
            entities.append({"text": text[a:b], "type": lab, "start": a, "end": b})
        entities.sort(key=lambda e: (e["start"], e["end"]))
        overlaps = sum(1 for x, y in zip(entities, entities[1:]) if y["start"] < x["end"])
        if overlaps:
            log.warning(
                "%s:%d: %d overlapping or nested annotation(s) kept (BIO views keep the first of each overlap)", where_file, line, overlaps
            )
        records.append(
            {
                "id": f"{rec_prefix}:{i}",
                "text": text,
                "tokens": [text[a:b] for a, b in offsets],
                "token_offsets": [list(o) for o in offsets],
                "entities": entities,
            }
        )
    if problems:
        raise BioError(problems)
    return records


# -- export ---------------------------------------------------------------------------------------
def to_labelstudio(rows: list[dict], gold: dict[str, dict] | None = None) -> list[dict]:
    """Tasks with the predictions as ``predictions`` (and the gold, where given, as ``annotations``)."""

    def result(ents, prefix):
        return [
            {
                "id": f"{prefix}{j}",
                "from_name": "label",
                "to_name": "text",
                "type": "labels",
                "value": {"start": e["start"], "end": e["end"], "text": e["text"], "labels": [e["type"]]},
            }
            for j, e in enumerate(ents)
        ]

    out = []
    for i, r in enumerate(rows):
        task = {
            "id": i + 1,
            "data": {"text": r["text"], "medner_id": r.get("id")},
            "predictions": [{"model_version": "medner", "result": result(r.get("entities", []), "p")}],
        }
        if gold and r.get("id") in gold:
            task["annotations"] = [{"result": result(gold[r["id"]]["entities"], "g")}]
        out.append(task)
    return out


def to_doccano(rows: list[dict]) -> list[dict]:
    return [
        {"id": r.get("id", i), "text": r["text"], "label": [[e["start"], e["end"], e["type"]] for e in r.get("entities", [])]}
        for i, r in enumerate(rows)
    ]


def write_brat(rows: list[dict], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, r in enumerate(rows):
        stem = folder / f"doc{i:05d}"
        stem.with_suffix(".txt").write_text(r["text"], encoding="utf-8")
        stem.with_suffix(".ann").write_text(
            "".join(f"T{j + 1}\t{e['type']} {e['start']} {e['end']}\t{e['text']}\n" for j, e in enumerate(r.get("entities", []))),
            encoding="utf-8",
        )


def write_tool_format(rows: list[dict], fmt: str, out: str | Path | None, gold: dict[str, dict] | None = None) -> None:
    """Rows (records or results) as a Label Studio import (gold, where given, as the annotation set), Doccano
    JSONL, or a brat folder; ``out`` None = standard output (not for brat, which is a folder)."""

    if fmt == "brat":
        if not out:
            raise ValueError("--format brat writes a folder: give --out DIR")
        write_brat(rows, Path(out))
        return
    if fmt not in ("labelstudio", "doccano"):
        raise ValueError(f"format must be labelstudio, doccano or brat, not {fmt!r}")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
    fh = open(out, "w", encoding="utf-8") if out else sys.stdout
    try:
        if fmt == "labelstudio":
            json.dump(to_labelstudio(rows, gold), fh, ensure_ascii=False, indent=1)
            fh.write("\n")
        else:
            fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in to_doccano(rows))
    finally:
        if fh is not sys.stdout:
            fh.close()
