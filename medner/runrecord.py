"""The run record: what an adapter was trained with, saved as ``medner_run.json`` in the adapter folder.

Serve and eval read it and refuse, with a clear message, a base model, prompt version or label set
that does not match what the adapter learned.
"""

from __future__ import annotations

import json
from pathlib import Path

from medner.prompts.render import PROMPT_VERSION, template_hash
from medner.prompts.schema import schema_hash

RECORD_NAME = "medner_run.json"


class RunRecordError(ValueError):
    pass


def read_record(adapter_dir: str | Path) -> dict | None:
    p = Path(adapter_dir) / RECORD_NAME
    if not p.is_file():
        return None
    return json.loads(p.read_text(encoding="utf-8"))


def write_record(adapter_dir: str | Path, record: dict) -> None:
    Path(adapter_dir, RECORD_NAME).write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def check_adapter(adapter_dir: str | Path, base_model_dir: str | Path | None = None, corpus=None) -> dict:
    """Raise RunRecordError when the adapter does not fit the base model, prompts or corpus in use."""
    rec = read_record(adapter_dir)
    if rec is None:
        raise RunRecordError(f"{adapter_dir}: no {RECORD_NAME}; not an adapter trained by `medner sft train`")
    if rec.get("prompt_version") != PROMPT_VERSION or rec.get("prompt_template_sha256") != template_hash(rec.get("prompt_version", PROMPT_VERSION)):
        raise RunRecordError(
            f"{adapter_dir}: trained with prompt version {rec.get('prompt_version')!r} "
            f"(template hash {str(rec.get('prompt_template_sha256'))[:12]}), but this medner renders {PROMPT_VERSION!r} "
            f"(hash {template_hash()[:12]}); retrain, or use the medner version that trained it"
        )
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
        from medner.models import weights_hash

        want = rec.get("base_model", {}).get("weights_sha256")
        got = weights_hash(Path(base_model_dir))
        if want and got != want:
            raise RunRecordError(
                f"{adapter_dir}: trained on base model {rec['base_model'].get('source')!r} "
                f"(weights {want[:12]}), but {base_model_dir} has weights {got[:12]}; serve it with the base it was trained on"
            )
    return rec
