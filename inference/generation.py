"""The generative backends' shared part: the :class:`Generator` protocol (planned requests -> replies) and
:func:`predict`, the loop they share with the SFT dev evaluation: chunk the records, plan each with the contract,
generate, parse and assemble with the contract. So they cannot differ in prompts, windows, bounds or parsing,
only in the tokens. :class:`GenerativeBackend` makes a generator a :class:`~medner.inference.backends.Backend`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from medner.data.registry import Corpus
from medner.data.windows import WINDOW_TOKENS
from medner.inference.runrecord import check_adapter, decode_wider, prompt_version_for
from medner.inference.settings import InferenceSettings
from medner.prompts.contract import Plan, Reply, Task, assemble_result, keep_asked, plan_requests, task_for

Write = Callable[[dict], None]
log = logging.getLogger(__name__)


class Generator(Protocol):
    """What a generative backend implements: planned requests -> replies."""

    name: str
    tokenizer: object  # counts tokens and renders the chat template for planning
    max_model_len: int
    chunk_records: int  # records planned and generated together

    def generate(self, plans: Sequence[Plan], constrained: bool) -> list[Reply]: ...


def resolve_task(
    cfg: InferenceSettings,
    corpus: Corpus,
    model_dir: Path | None,
    served_version: Callable[[], str] | None = None,
    served_record: Callable[[], dict | None] | None = None,
) -> Task:
    """The task, with the prompt version the model was trained with (checked against its run record;
    ``served_version``/``served_record``: the served model's, when a server answers), decoding with every type
    the model was trained on when it knows more than the corpus's (:func:`decode_wider`)."""
    record: dict | None = None
    if cfg.adapter:
        record = check_adapter(cfg.adapter, model_dir, corpus, cfg.prompt_version)
        version = record["prompt_version"]
    elif served_version is not None:
        version = served_version()
        record = served_record() if served_record is not None else None
    else:
        version = prompt_version_for(cfg.prompt_version, None, str(cfg.model))
    task = decode_wider(task_for(corpus, prompt_version=version), record)
    if task.decode_labels:
        log.info(
            "decoding with the model's %d trained types, answers keep %s's %d (mentions of others are left out)",
            len(task.decode_names),
            corpus.name,
            len(task.label_names),
        )
    return task


def predict(
    backend: Generator,
    records: Sequence[dict],
    task: Task,
    write: Write,
    window_tokens: int = WINDOW_TOKENS,
    constrained: bool = True,
    max_tokens_cap: int | None = None,
    warm_up: bool = True,
    grounded: str | None = None,
) -> float:
    """Records -> one result per record, in order, through ``write``; returns the wall time of planning +
    generation. Not included: model loading (the caller's) and one warm-up request (the first record's first
    window, its reply discarded) that every backend gets before the clock starts, as a running server has had:
    it fills the prefix cache with the task's shared instruction and pays the one-time start of the grammar
    compiler (about 2 s on a 2-core CPU). Each result carries ``latency_s``: the reply's own latency where the
    backend measures one (server), else the wall time of the batch it was generated in."""

    def plan(rec: dict) -> list[Plan]:
        return plan_requests(
            rec["text"],
            rec["token_offsets"],
            task,
            window_tokens,
            backend.tokenizer,
            backend.max_model_len,
            constrained,
            max_tokens_cap,
            grounded,
        )

    first = next((r for r in records if r["text"].strip()), None)
    if first is not None and warm_up:
        backend.generate(plan(first)[:1], constrained)
    t0 = time.perf_counter()
    step = max(1, backend.chunk_records)
    for start in range(0, len(records), step):
        chunk = records[start : start + step]
        plans = [plan(r) for r in chunk]
        flat = [p for ps in plans for p in ps]
        t = time.perf_counter()
        replies = backend.generate(flat, constrained) if flat else []
        dt = time.perf_counter() - t
        k = 0
        for rec, ps in zip(chunk, plans):
            reps = replies[k : k + len(ps)]
            k += len(ps)
            res = keep_asked({"id": rec["id"], "text": rec["text"], **assemble_result(rec["text"], ps, reps)}, task)
            lat = [r["latency_s"] for r in reps if "latency_s" in r]
            res["latency_s"] = max(lat) if lat else (dt if ps else 0.0)
            write(res)
    return time.perf_counter() - t0


@dataclasses.dataclass
class GenerativeBackend:
    """A :class:`Generator` with the task and decoding settings: a :class:`Backend`."""

    generator: Generator
    task: Task
    window_tokens: int = WINDOW_TOKENS
    constrained: bool = True
    max_tokens: int | None = None
    grounded: str | None = None

    @property
    def name(self) -> str:
        return self.generator.name

    @property
    def prompt_version(self) -> str | None:
        return self.task.prompt_version

    def predict(self, records: Sequence[dict], write: Write) -> float:
        return predict(
            self.generator, records, self.task, write, self.window_tokens, self.constrained, self.max_tokens, grounded=self.grounded
        )
