"""The run record: what an adapter was trained with, saved as ``medner_run.json`` in the adapter folder.

Serve and eval read it and refuse, with a clear message, a base model, prompt version or label set
that does not match what the adapter learned. A model is always queried with the prompt version it was
trained with: :func:`prompt_version_for` picks it from the record, and refuses another one asked for.
A merged model folder carries a copy of its adapter's record, so a client can find it from the served
model's folder (the ``root`` of its ``/v1/models`` card).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

from medner.data.registry import load_registry
from medner.inference.models import RECORD_NAME, weights_hash
from medner.prompts.contract import Task
from medner.prompts.render import PROMPT_VERSION, prompt_versions, template_hash
from medner.prompts.schema import schema_hash


class RunRecordError(ValueError):
    pass


def read_record(adapter_dir: str | Path) -> dict | None:
    p = Path(adapter_dir) / RECORD_NAME
    if not p.is_file():
        return None
    return json.loads(p.read_text(encoding="utf-8"))


def write_record(adapter_dir: str | Path, record: dict) -> None:
    Path(adapter_dir, RECORD_NAME).write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def prompt_version_for(requested: str | None, record: dict | None, where: str) -> str:
    """The prompt version to query a model with: its run record's (refusing another one asked for), or the
    one asked for, or the default for a model without a record (a base model, zero-shot)."""
    if record is None:
        version = requested or PROMPT_VERSION
        template_hash(version)  # unknown version: one clear error
        return version
    trained = record.get("prompt_version", PROMPT_VERSION)
    if requested and requested != trained:
        raise RunRecordError(
            f"{where} was trained with prompt version {trained!r}, not {requested!r}: a model answers well only in the format it "
            f"learned; leave prompt_version unset (the trained one is used) or retrain with prompt_version={requested}"
        )
    return trained


def check_adapter(
    adapter_dir: str | Path, base_model_dir: str | Path | None = None, corpus=None, prompt_version: str | None = None
) -> dict:
    """Raise RunRecordError when the adapter does not fit the base model, prompts or corpus in use
    (``prompt_version``: one asked for explicitly, refused unless it is the trained one)."""
    rec = read_record(adapter_dir)
    if rec is None:
        raise RunRecordError(f"{adapter_dir}: no {RECORD_NAME}; not an adapter trained by `medner sft train`")
    if rec.get("family", "generative") != "generative":
        raise RunRecordError(
            f"{adapter_dir}: a {rec['family']} run (`medner tokcls train`), not a generative adapter; "
            "evaluate it with backend=tokcls and serve it with `medner api --tokcls`"
        )
    version = rec.get("prompt_version", PROMPT_VERSION)
    if version not in prompt_versions():
        raise RunRecordError(
            f"{adapter_dir}: trained with prompt version {version!r}, which this medner does not have "
            f"({', '.join(prompt_versions())}); use the medner version that trained it"
        )
    if rec.get("prompt_template_sha256") != template_hash(version):
        raise RunRecordError(
            f"{adapter_dir}: trained with prompt version {version!r} (template hash {str(rec.get('prompt_template_sha256'))[:12]}), "
            f"but this medner's {version!r} templates hash to {template_hash(version)[:12]}; retrain, or use the medner version that trained it"
        )
    prompt_version_for(prompt_version, rec, str(adapter_dir))
    if corpus is not None:
        trained = rec.get("corpora", {})
        if corpus.name not in trained:
            raise RunRecordError(
                f"{adapter_dir}: trained on {', '.join(trained) or 'no corpus'}, not on {corpus.name!r}; "
                "its label set does not match (use the base model for zero-shot on other label sets)"
            )
        if trained[corpus.name]["schema_sha256"] != schema_hash(corpus.label_names):
            raise RunRecordError(
                f"{adapter_dir}: trained on {corpus.name} labels {trained[corpus.name]['labels']}, "
                f"but the registry now has {corpus.label_names}"
            )
    if base_model_dir is not None:
        want = rec.get("base_model", {}).get("weights_sha256")
        got = weights_hash(Path(base_model_dir))
        if want and got != want:
            raise RunRecordError(
                f"{adapter_dir}: trained on base model {rec['base_model'].get('source')!r} "
                f"(weights {want[:12]}), but {base_model_dir} has weights {got[:12]}; serve it with the base it was trained on"
            )
    return rec


SHIPPED = Path(__file__).resolve().parents[1] / "models"


def shipped_adapter(name_or_dir: str) -> Path:
    """An adapter folder, or the name of one shipped in ``models/`` (``adapter=chat-qwen2.5-0.5b``)."""
    p = Path(name_or_dir)
    if p.is_dir() or not (SHIPPED / name_or_dir).is_dir():
        return p
    return SHIPPED / name_or_dir


def decode_types(asked: Sequence[str], known: Sequence[str]) -> list[str]:
    """The types the grammar admits. All asked types trained: every trained type, so that the model's mentions
    of the others are written as such and left out, not forced into the asked ones. A type the model never saw
    asked for: the asked types alone, so the model must write the asked names (measured, the shipped chat model,
    "Pathology" for Disease: F1 0.64 this way on 100 NCBI-disease test records, 0.00 with the trained types
    admitted, where it writes its own "Disease")."""
    if all(t in known for t in asked):
        return list(known)
    return list(asked)


def decode_wider(task: Task, record: dict | None) -> Task:
    """``task`` decoding with the types :func:`decode_types` gives for the model's run record: every trained
    type when those are more than the asked ones (a model of several corpora asked for one corpus's types, or
    for a subset), and the result keeps the asked ones (:func:`~medner.prompts.contract.keep_asked`).
    Unchanged without a record, for a single-corpus adapter asked for its types, or when an untrained type is asked."""
    if not record or not record.get("corpora"):
        return task
    types = decode_types(task.label_names, trained_types(record)["labels"])
    if set(types) == set(task.label_names):
        return task
    return dataclasses.replace(task, decode_labels=tuple(types))


def trained_types(record: dict | None) -> dict:
    """The types the served model was trained on (its run record), else every registered corpus's, with a warning."""
    if record and record.get("corpora"):
        names: list[str] = []
        for c in record["corpora"].values():
            names += [n for n in c.get("labels", []) if n not in names]
        return {"labels": names, "warnings": []}
    names = []
    for c in load_registry().values():
        names += [n for n in c.label_names if n not in names]
    return {"labels": names, "warnings": ["the served model has no readable run record: types are every registered corpus's"]}


def untrained_warning(asked: Sequence[str], known: Sequence[str]) -> list[str]:
    new = [n for n in asked if n not in known]
    if not new:
        return []
    return [
        f"type(s) {', '.join(new)} were never trained: the model answers them zero-shot, far less reliably than the "
        "types it was trained on (docs/chat.md)"
    ]
